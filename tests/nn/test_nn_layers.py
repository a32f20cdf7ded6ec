"""ppac_jax.nn layers against the reference module golden vectors, and layer behaviour."""


import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import convert, ops
from ppac_jax import nn as pnn
from tests import golden as G

F32_OUT_RTOL = 1e-5
F32_GRAD_RTOL = 1e-4     # relative to max|.| per array (golden README section 4)

MODULES = {
    "PacConv2d_module": pnn.PacConv2d,
    "PacConvTranspose2d_module": pnn.PacConvTranspose2d,
    "PacPool2d_module": pnn.PacPool2d,
    "ProbPacConv2d": pnn.ProbPacConv2d,
    "NormalizedPacConv2d": pnn.NormalizedPacConv2d,
}
# golden input name -> position of the argument in the layer call
CALL_ORDER = {
    "ProbPacConv2d": ("in_input_features", "in_input_for_probabilities", "in_input_for_kernel"),
    "NormalizedPacConv2d": ("in_input_features", "in_input_for_kernel"),
}


def _build(g):
    cls_key = next(k for k in MODULES if g.name.startswith(k))
    args = dict(g.meta.get("module_args", {}))
    if cls_key == "PacConvTranspose2d_module" and "filler=linear" in g.meta["description"]:
        args["filler"] = "linear"
    module = MODULES[cls_key](**args)
    order = CALL_ORDER.get(cls_key, ("in_input", "in_guidance"))
    return module, order


def _state_dict(g):
    return {k.split("_", 1)[1]: g[k] for k in g.arrays if k.startswith(("param_", "buf_"))}



def _tolerances(dtype_tag, expected):
    if dtype_tag == "f64":
        return 1e-9, 1e-11
    return F32_OUT_RTOL, F32_OUT_RTOL * float(np.abs(expected).max())


def _assert_grad(actual, expected, tag, name):
    if tag == "f64":
        G.assert_close(actual, expected, rtol=1e-9, atol=1e-11, name=name)
    else:
        scale = max(float(np.abs(expected).max()), 1e-30)
        assert actual.shape == expected.shape, name
        np.testing.assert_allclose(actual, expected, rtol=0, atol=F32_GRAD_RTOL * scale,
                                   err_msg=name)


GOLDEN = [n for pat in ("PacConv2d_module_*", "PacConvTranspose2d_module_*",
                        "PacPool2d_module_*", "ProbPacConv2d_*", "NormalizedPacConv2d_*")
          for n in G.golden_files(pat + ".npz")]


@pytest.mark.parametrize("name", GOLDEN or G.params_or_skip("__none__"))
def test_module_golden(name):
    g = G.Golden(name)
    tag = name.rsplit("_", 1)[1].split(".")[0]
    module, order = _build(g)
    convert.load_torch_weights(module, _state_dict(g))
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    inputs = tuple(jnp.asarray(G.nchw(g[k])) for k in order)
    cot = jnp.asarray(G.nchw(g["cot_output"]))
    out, gparams, ginputs = G.module_vjp_runner(graphdef)(params, rest, inputs, cot)
    rtol, atol = _tolerances(tag, g["out_output"])
    G.assert_close(G.to_nchw(np.asarray(out)), g["out_output"], rtol=rtol, atol=atol,
                   name=f"{name}: out")
    for key, grad in zip(order, ginputs):
        _assert_grad(G.to_nchw(np.asarray(grad)), g[f"grad_{key}"], tag, f"{name}: grad_{key}")
    exported = convert.export_torch_gradients(module, gparams)
    expected = {k[len("grad_param_"):]: g[k] for k in g.arrays if k.startswith("grad_param_")}
    assert set(exported) == set(expected), (sorted(exported), sorted(expected))
    for key, value in expected.items():
        _assert_grad(exported[key], value, tag, f"{name}: grad_param_{key}")
    # the parameters themselves go back unchanged
    back = convert.export_torch_weights(module)
    for key, value in _state_dict(g).items():
        np.testing.assert_array_equal(back[key], value)
        assert back[key].dtype == value.dtype


# ---------------------------------------------------------------------------------------------
# behaviour beyond the golden files


def test_layer_equals_ops_with_precomputed_kernel():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 10, 3)), jnp.float32)
    guide = jnp.asarray(rng.normal(size=(2, 9, 10, 4)), jnp.float32)
    layer = pnn.PacConv2d(3, 5, 3, stride=2, padding=1, kernel_type="inv_0.3_0.7_asym",
                          smooth_kernel_type="average_3", normalize_kernel=True)

    @nnx.jit
    def run(layer, x, guide):
        kernel, _ = ops.pac_kernel(guide, 3, stride=2, padding=1, kernel_type="inv", asym=True,
                                   inv_alpha=0.3, inv_lambda=0.7,
                                   smooth_kernel=jnp.full((3, 3), 1 / 9), normalize=True)
        expected = ops.pac_conv2d(x, kernel, layer.weight[...], layer.bias[...], stride=2,
                                  padding=1)
        return layer(x, guide), layer(x, kernel=kernel), expected

    from_guide, from_kernel, expected = run(layer, x, guide)
    np.testing.assert_allclose(from_guide, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(from_kernel, expected, rtol=1e-5, atol=1e-6)


def test_state_dict_names_and_variable_kinds():
    layer = pnn.PacConv2d(3, 3, 5, kernel_type="inv_0.5_1.0_fixed", smooth_kernel_type="full_3",
                          shared_filters=True, filler="crf_pool", bias=False)
    sd = convert.export_torch_weights(layer)
    assert {k: v.shape for k, v in sd.items()} == {
        "weight": (1, 1, 5, 5), "inv_alpha": (), "inv_lambda": (), "smooth_kernel": (1, 1, 3, 3)}
    params = nnx.state(layer, nnx.Param)
    assert set(dict(nnx.to_flat_state(params)).keys()) == {("smooth_kernel",)}
    pool = pnn.PacPool2d(3, padding=1, kernel_type="inv_0.2_0.2", channel_wise=True,
                         out_channels=4)
    assert {k: v.shape for k, v in convert.export_torch_weights(pool).items()} == {
        "inv_alpha": (4,), "inv_lambda": (4,)}
    prob = pnn.ProbPacConv2d(2, 3, 3, padding=1)
    assert {k: v.shape for k, v in convert.export_torch_weights(prob).items()} == {
        "weight": (3, 2, 3, 3), "weight_normalization": (3, 2, 3, 3), "bias": (3,)}
    np.testing.assert_allclose(np.exp(prob.weight_normalization[...]), prob.weight[...], rtol=1e-6)
    t = pnn.PacConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1)
    assert convert.export_torch_weights(t)["weight"].shape == (2, 4, 3, 3)


def test_uniform_init_bounds_and_default_seed():
    a = pnn.PacConv2d(4, 6, 3)
    b = pnn.PacConv2d(4, 6, 3)
    np.testing.assert_array_equal(a.weight[...], b.weight[...])
    c = pnn.PacConv2d(4, 6, 3, rngs=nnx.Rngs(7))
    assert not np.array_equal(a.weight[...], c.weight[...])
    bound = 1 / np.sqrt(4 * 9)
    assert float(jnp.abs(a.weight[...]).max()) <= bound
    assert float(jnp.abs(a.bias[...]).max()) <= bound
    p = pnn.ProbPacConv2d(4, 4, 3, shared_filters=True)
    assert float(p.weight[...].min()) >= 0 and float(p.weight[...].max()) <= bound


def test_fillers_in_layers():
    t = pnn.PacConvTranspose2d(2, 2, 5, stride=2, padding=2, output_padding=1, filler="linear")
    np.testing.assert_array_equal(t.weight[...], pnn.fillers.linear_weight(2, 5, 2))
    np.testing.assert_array_equal(t.bias[...], 0)
    c = pnn.PacConv2d(3, 3, 5, padding=2, filler="crf", bias=False)
    np.testing.assert_array_equal(c.weight[...], pnn.fillers.crf_weight(3, 3, 5, False))
    p = pnn.PacConv2d(2, 2, 3, padding=1, filler="pool")
    np.testing.assert_allclose(np.asarray(p.weight[...]).sum((0, 1)), np.eye(2), rtol=1e-6)
    cp = pnn.PacConv2d(3, 3, 3, padding=1, filler="crf_perturbed", shared_filters=True)
    assert 0 < np.abs(cp.weight[...] - pnn.fillers.crf_weight(3, 3, 3, True)).max() < 0.1
    with pytest.raises(ValueError, match="linear"):
        pnn.PacConv2d(2, 2, 3, filler="linear")
    with pytest.raises(ValueError, match="filler"):
        pnn.PacConv2d(2, 2, 3, filler="bogus")
    with pytest.raises(ValueError, match="crf_pool"):
        pnn.PacConv2d(2, 2, 3, filler="crf_pool")


def test_bad_options_raise():
    with pytest.raises(ValueError, match="kernel_type"):
        pnn.PacConv2d(2, 2, 3, kernel_type="laplace")
    with pytest.raises(ValueError, match="smooth_kernel_type"):
        pnn.PacConv2d(2, 2, 3, smooth_kernel_type="average_4")
    with pytest.raises(ValueError, match="kernel_size"):
        pnn.PacConv2d(2, 2, 4)
    with pytest.raises(ValueError, match="out_channels"):
        pnn.PacPool2d(3, kernel_type="inv_0.2_0.2", channel_wise=True)
    layer = pnn.PacConv2d(2, 2, 3, padding=1)
    with pytest.raises(ValueError, match="guide"):
        layer(jnp.zeros((1, 4, 4, 2)))


def test_mask_returns_output_mask():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 6, 7, 2)), jnp.float32)
    guide = jnp.asarray(rng.normal(size=(1, 6, 7, 3)), jnp.float32)
    mask = jnp.ones((1, 6, 7, 1), jnp.float32).at[:, :3].set(0)
    layer = pnn.PacConv2d(2, 2, 3, padding=1)
    y, out_mask = nnx.jit(lambda layer, x, g, m: layer(x, g, mask=m))(layer, x, guide, mask)
    assert y.shape == (1, 6, 7, 2) and out_mask.shape == (1, 6, 7, 1)
    np.testing.assert_array_equal(out_mask[0, :2, :, 0], 0)
    np.testing.assert_array_equal(out_mask[0, 3:, :, 0], 1)


def test_layers_jit_and_grad_float32():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(1, 5, 6, 2)), jnp.float32)
    c = jnp.asarray(rng.uniform(0.1, 1, size=(1, 5, 6, 1)), jnp.float32)
    guide = jnp.asarray(rng.normal(size=(1, 5, 6, 3)), jnp.float32)
    layer = pnn.ProbPacConv2d(2, 2, 3, padding=1, shared_filters=True)

    @nnx.jit
    def loss(layer):
        return jnp.sum(layer(x, c, guide) ** 2)

    grads = nnx.grad(loss)(layer)
    names = convert.export_torch_gradients(layer, grads)
    assert set(names) == {"weight", "weight_normalization", "bias"}
    assert all(np.all(np.isfinite(v)) for v in names.values())


def test_option_wiring_transposed_and_pool():
    """Every constructor option reaches the op (mixes not covered by the golden files)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(1, 4, 5, 2)))
    guide_hi = jnp.asarray(rng.normal(size=(1, 8, 10, 3)))
    t = pnn.PacConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1,
                               kernel_type="inv_0.4_0.6_asym", smooth_kernel_type="full_3",
                               normalize_kernel=True, param_dtype=jnp.float64)
    smooth = jnp.asarray(rng.uniform(size=(3, 3)))
    t.smooth_kernel.set_value(smooth)
    xp = jnp.asarray(rng.normal(size=(1, 6, 7, 3)))
    guide = jnp.asarray(rng.normal(size=(1, 6, 7, 3)))
    p = pnn.PacPool2d(3, stride=1, padding=2, dilation=2, kernel_type="inv_0.2_0.5",
                      channel_wise=True, out_channels=3, normalize_kernel=True,
                      param_dtype=jnp.float64)
    p.inv_alpha.set_value(jnp.asarray([0.1, 0.2, 0.3]))

    @nnx.jit
    def run(t, p):
        kt, _ = ops.pac_kernel(guide_hi, 3, stride=2, padding=1, output_padding=1,
                               transposed=True, kernel_type="inv", asym=True, inv_alpha=0.4,
                               inv_lambda=0.6, smooth_kernel=smooth, normalize=True)
        yt = ops.pac_conv_transpose2d(x, kt, t.weight[...], t.bias[...], stride=2, padding=1,
                                      output_padding=1)
        kp, _ = ops.pac_kernel(guide, 3, padding=2, dilation=2, kernel_type="inv",
                               inv_alpha=jnp.asarray([0.1, 0.2, 0.3]), inv_lambda=0.5,
                               channel_wise=True, normalize=True)
        yp = ops.pac_pool2d(xp, kp, kernel_size=3, padding=2, dilation=2)
        return t(x, guide_hi), yt, p(xp, guide), yp

    got_t, want_t, got_p, want_p = run(t, p)
    assert got_t.shape == (1, 8, 10, 3) and got_p.shape == (1, 6, 7, 3)
    np.testing.assert_allclose(got_t, want_t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got_p, want_p, rtol=1e-12, atol=1e-12)
