"""PAC-CRF API behaviour beyond the golden files: learning, constants, weight naming, blur,
validation, precomputed kernels, untied steps with ``na`` terms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ppac_jax import ops
from ppac_jax.convert import export_torch_weights, load_torch_weights
from ppac_jax.nn.crf import PacCRF, PacCRFLoose

TERMS = [dict(kernel_size=3, dilation=1, compat_type="4d"),
         dict(kernel_size=3, dilation=2, blur=2, compat_type="potts", spatial_filter=False,
              pairwise_weight=0.5),
         dict(kernel_size=3, blur=2, compat_type="2d"),
         dict(kernel_size=3, compat_type="na")]


def _toy(seed=0, size=12, classes=3):
    """Two-region image; labels follow it; logits = weak signal + noise."""
    rng = np.random.default_rng(seed)
    label = (np.arange(size)[None, :] >= size // 2).repeat(size, 0).astype(np.int64)
    image = label[None, ..., None] * 3.0 + rng.normal(0, 0.1, (1, size, size, 1))
    logits = np.eye(classes)[label][None] * 0.2 + rng.normal(0, 1.0, (1, size, size, classes))
    return (jnp.asarray(logits, jnp.float32), jnp.asarray(image, jnp.float32),
            jnp.asarray(label[None]))


def test_learnability_and_constant_parameters():
    logits, image, label = _toy()
    crf = PacCRF(3, 3, final_output="log_softmax", pairwise_kernels=TERMS)
    opt = nnx.Optimizer(crf, optax.adam(0.01), wrt=nnx.Param)

    def loss_fn(model):
        log_p = model(logits, image)
        return -jnp.mean(jnp.take_along_axis(log_p, label[..., None], axis=-1))

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss, grads

    losses = []
    for _ in range(8):
        loss, grads = step(crf, opt)
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses
    # the original learns: messengers (not the crf_pool buffer), compat, unary_weight and only
    # the pairwise weight of potts-without-spatial-filter (term 1)
    g = nnx.to_flat_state(grads)
    flat = {".".join(map(str, p)): np.asarray(v[...] if isinstance(v, nnx.Variable) else v)
            for p, v in g}
    assert "messengers.1.weight" not in flat  # a buffer, not a parameter
    for name in ("pairwise_weights.0", "pairwise_weights.2", "pairwise_weights.3"):
        assert np.all(flat[name] == 0), name
    for name in ("pairwise_weights.1", "unary_weight", "messengers.0.weight",
                 "messengers.2.weight", "messengers.3.weight", "compat.2.weight"):
        assert np.any(flat[name] != 0), name


def test_fixed_weighting_has_no_unary_parameter():
    crf = PacCRF(3, 2, fixed_weighting=True, unary_weight=0.7, pairwise_kernels=TERMS[:2])
    names = set(export_torch_weights(crf))
    assert names == {"messengers.0.weight", "messengers.1.weight", "pairwise_weights.0",
                     "pairwise_weights.1"}
    logits, image, _ = _toy()
    grads = nnx.grad(lambda m: jnp.sum(m(logits, image) ** 2))(crf)
    assert float(grads["pairwise_weights"][0][...]) == 0.0
    assert float(grads["pairwise_weights"][1][...]) == 0.0


def test_weight_names_round_trip():
    crf = PacCRF(4, 1, pairwise_kernels=TERMS)
    sd = export_torch_weights(crf)
    assert sd["messengers.0.weight"].shape == (4, 4, 3, 3)        # OIHW
    assert sd["messengers.1.weight"].shape == (1, 1, 3, 3)
    assert sd["compat.2.weight"].shape == (4, 4, 1, 1)
    assert float(sd["pairwise_weights.1"]) == -0.5                 # potts stores -w
    other = PacCRF(4, 1, pairwise_kernels=TERMS, rngs=nnx.Rngs(5))
    assert not np.allclose(export_torch_weights(other)["messengers.3.weight"],
                           sd["messengers.3.weight"])
    load_torch_weights(other, sd)
    for k, v in export_torch_weights(other).items():
        np.testing.assert_array_equal(v, sd[k])


def test_loose_matches_tied_when_steps_share_weights_and_handles_na():
    logits, image, _ = _toy()
    tied = PacCRF(3, 3, final_output="softmax", pairwise_kernels=TERMS)
    loose = PacCRFLoose(3, 3, final_output="softmax", pairwise_kernels=TERMS)
    sd = export_torch_weights(tied)
    load_torch_weights(loose, {f"steps.{t}.{k}": v for t in range(3) for k, v in sd.items()})
    a = jax.jit(lambda u, e: tied(u, e))(logits, image)
    b = jax.jit(lambda u, e: loose(u, e))(logits, image)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_edge_feature_list_and_precomputed_kernels():
    logits, image, _ = _toy()
    crf = PacCRF(3, 2, pairwise_kernels=TERMS)
    shared = crf(logits, image)
    listed = crf(logits, [image, image, image, None])  # na entry ignored
    kernels = crf.edge_kernels(image)
    pre = crf(logits, None, edge_kernels=kernels)
    np.testing.assert_allclose(np.asarray(listed), np.asarray(shared), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(pre), np.asarray(shared), rtol=1e-6)
    assert kernels[3] is None and kernels[1].shape == (1, 6, 6, 3, 3)


def test_blur_pool_and_upsample_shapes():
    x = jnp.arange(2 * 23 * 18 * 1, dtype=jnp.float32).reshape(2, 23, 18, 1)
    p = ops.blur_pool(x, 4)
    assert p.shape == (2, 6, 5, 1)
    # count_include_pad=False: a constant stays constant, also at the padded border
    np.testing.assert_allclose(np.asarray(ops.blur_pool(jnp.ones_like(x), 4)), 1.0)
    up = ops.blur_upsample(p, 4, (23, 18))
    assert up.shape == x.shape
    np.testing.assert_allclose(np.asarray(ops.blur_upsample(jnp.ones_like(p), 4, (23, 18))), 1.0)


# (shared filters, dilation, rows per strip, taps per forward step, taps per backward step)
_MESSAGE_CASES = [
    (False, 2, 1, 9, 3),    # one-row strips, all taps in one GEMM, a window row a backward step
    (True, 2, 5, 2, 0),     # a moved-up last strip (37 rows), a remainder tap group
    (False, 13, 1, 9, 3),   # a halo (26 rows) far taller than the strips, padding 13 > 29 / 2
    (True, 13, 0, 0, 0),    # the whole image in one piece
    (False, 2, 0, 0, 0),
]


@pytest.mark.parametrize("shared,dilation,rows,group,backward_group", _MESSAGE_CASES)
def test_engine_message_matches_pac_conv2d(shared, dilation, rows, group, backward_group):
    """The message on the tap-loop engine (its custom VJP, strips reading the padded q
    directly) equals the PAC op's reference, for several tilings and odd sizes."""
    from ppac_jax.ops import crf as crf_ops
    from ppac_jax.ops.tiling import Tiling
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.random((2, 37, 29, 4)))
    kern = jnp.asarray(rng.random((2, 37, 29, 3, 3)))
    w = jnp.asarray(rng.normal(size=(3, 3, 1, 1) if shared else (3, 3, 4, 4)))
    ct = jnp.asarray(rng.normal(size=(2, 37, 29, 4)))
    tiling = Tiling(rows=rows, group=group, backward_group=backward_group)

    def ours(a, b, c):
        return crf_ops._tap_message(a, crf_ops._tap_major(b), c, dilation=dilation,
                                    shared_filters=shared, tiling=tiling)

    def ref(a, b, c):
        return ops.pac_conv2d(a, b, c, padding=dilation, dilation=dilation,
                              shared_filters=shared, impl="patches")

    # the engine really runs (its custom VJP, loops forward and backward); the reference not
    names = lambda f: {e.primitive.name for e in jax.make_jaxpr(f)(q, kern, w).jaxpr.eqns}
    assert "call_hi_primitive" in names(ours)    # ops.autodiff.custom_vjp
    assert names(lambda *a: jax.vjp(ours, *a)[1](ct)) & {"while", "scan"}
    assert not names(ref) & {"call_hi_primitive", "while", "scan"}
    got, vjp = jax.vjp(ours, q, kern, w)
    got_grads = vjp(ct)
    want, vjp = jax.vjp(ref, q, kern, w)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)
    for a, b in zip(got_grads, vjp(ct)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-11)


def test_validation_errors():
    with pytest.raises(ValueError, match="compat_type"):
        PacCRF(3, 1, pairwise_kernels=dict(compat_type="3d"))
    with pytest.raises(ValueError, match="kernel_size"):
        PacCRF(3, 1, pairwise_kernels=dict(kernel_size=4))
    with pytest.raises(ValueError, match="unknown keys"):
        PacCRF(3, 1, pairwise_kernels=[dict(kernel_size=3, sigma=2)])
    crf = PacCRF(3, 1, pairwise_kernels=TERMS[:1])
    logits, image, _ = _toy()
    with pytest.raises(ValueError, match="unary"):
        crf(logits[..., :2], image)
    with pytest.raises(ValueError, match="edge_features"):
        crf(logits, [image, image])
    with pytest.raises(ValueError, match="final_output"):
        PacCRF(3, 1, final_output="probs")
    with pytest.raises(ValueError, match="yx_scale"):
        ops.yxrgb_features(jnp.zeros((1, 4, 4, 3)))


def test_compile_does_not_unroll_steps():
    """The mean-field loop is one scan: the lowered program does not grow with num_steps."""
    logits, image, _ = _toy()
    sizes = []
    for steps in (2, 8):
        crf = PacCRF(3, steps, pairwise_kernels=TERMS[:2])
        text = jax.jit(lambda u, e: crf(u, e)).lower(logits, image).as_text()
        sizes.append(len(text))
    assert abs(sizes[0] - sizes[1]) < 200, sizes


def test_batch_items_are_independent_and_bfloat16_runs():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 10, 9, 3)), jnp.float32)
    image = jnp.asarray(rng.normal(size=(2, 10, 9, 2)), jnp.float32)
    crf = PacCRF(3, 2, final_output="softmax", pairwise_kernels=TERMS)
    run = jax.jit(lambda u, e: crf(u, e))
    both = run(logits, image)
    np.testing.assert_allclose(np.asarray(both[1:]), np.asarray(run(logits[1:], image[1:])),
                               rtol=1e-5, atol=1e-6)
    half = run(logits.astype(jnp.bfloat16), image.astype(jnp.bfloat16))
    assert half.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(half)))
    np.testing.assert_allclose(np.asarray(half), np.asarray(both), atol=0.1)
