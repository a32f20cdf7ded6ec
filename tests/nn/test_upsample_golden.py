"""Joint-upsampling networks against the reference golden files (``upsample_*``): outputs and
gradients w.r.t. inputs and every parameter, plus the models' defining equivalences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import convert
from ppac_jax import nn as pnn
from ppac_jax import ops
from tests import golden as G
from tests.golden_recipe import state_dict

F64_RTOL = 1e-12          # relative to max|ref| (golden README 9.3)
F32_OUT_RTOL = 1e-5
F32_GRAD_RTOL = 1e-3

MODELS = {"PacJointUpsample": pnn.PacJointUpsample,
          "PacJointUpsampleLite": pnn.PacJointUpsampleLite, "DJIF": pnn.DJIF,
          "DJIFWide": pnn.DJIFWide, "JointBilateral": pnn.JointBilateral,
          "Bilinear": pnn.Bilinear}

NETWORK_FILES = [n for n in G.golden_files("upsample_*.npz")
                 if not n.startswith(("upsample_preprocess_", "upsample_trainloss_"))]


def _tag(name):
    return name.rsplit("_", 1)[1].split(".")[0]


def _build(g):
    """The model with default (float32) parameters: loading float64 weights makes it float64."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v
              for k, v in g.meta["ctor_kwargs"].items()}
    return MODELS[g.meta["model"]](g.meta["factor"], **kwargs)


def _close(actual, expected, rtol, name, *, scale=None):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{name}: {actual.shape} != {expected.shape}"
    scale = float(np.abs(expected).max()) if scale is None else scale
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * max(scale, 1e-300),
                               err_msg=name)


def _zero_grad_params(g):
    """Parameters whose gradient is analytically zero (golden README 9.3): absolute check."""
    if g.meta["model"].startswith("PacJointUpsample"):
        n_g = max(int(k.split(".conv")[1].split(".")[0]) for k in g.meta["param_names"]
                  if k.startswith("branch_g.conv"))
        return {f"branch_g.conv{n_g}.bias"}
    return set()


@pytest.mark.parametrize("name", NETWORK_FILES or G.params_or_skip("__none__"))
def test_network_golden(name):
    g = G.Golden(name)
    tag = _tag(name)
    dtype = jnp.float64 if tag == "f64" else jnp.float32
    model = _build(g)
    convert.load_torch_weights(model, state_dict(g, g["in_guide"].dtype))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    inputs = (jnp.asarray(G.nchw(g["in_target_low"])), jnp.asarray(G.nchw(g["in_guide"])))
    cot = jnp.asarray(G.nchw(g["cot_output"]))
    out, gparams, (g_low, g_guide) = G.module_vjp_runner(graphdef)(params, rest, inputs, cot)
    assert out.dtype == dtype
    out_rtol = F64_RTOL if tag == "f64" else F32_OUT_RTOL
    grad_rtol = F64_RTOL if tag == "f64" else F32_GRAD_RTOL
    _close(G.to_nchw(np.asarray(out)), g["out_output"], out_rtol, f"{name}: out")
    _close(G.to_nchw(np.asarray(g_low)), g["grad_in_target_low"], grad_rtol,
           f"{name}: grad_in_target_low")
    _close(G.to_nchw(np.asarray(g_guide)), g["grad_in_guide"], grad_rtol,
           f"{name}: grad_in_guide")
    grads = convert.export_torch_gradients(model, gparams)
    names = g.meta.get("param_names", [k[len("param_"):] for k in g.arrays
                                       if k.startswith("param_")])
    assert set(grads) == set(names), (sorted(grads), sorted(names))
    norms = g.meta.get("grad_norms", {})
    norm_scale = max(norms.values(), default=1.0)
    zero = _zero_grad_params(g)
    for key in names:
        grad = grads[key]
        if key in zero:
            _close(grad, np.zeros_like(grad), grad_rtol, f"{name}: {key} (analytically 0)",
                   scale=norm_scale)
            continue
        if f"grad_param_{key}" in g:
            _close(grad, g[f"grad_param_{key}"], grad_rtol, f"{name}: grad {key}")
        else:
            step = g.meta["grad_subsample"][key]
            _close(grad.ravel()[::step], g[f"gsub_param_{key}"], grad_rtol,
                   f"{name}: subsampled grad {key}")
        if key in norms:
            _close(np.linalg.norm(grad), np.asarray(norms[key]), grad_rtol,
                   f"{name}: grad norm {key}")
    assert np.isfinite(np.asarray(g_guide)).all()
    # the state dict goes back unchanged (names and layouts)
    back = convert.export_torch_weights(model)
    sd = state_dict(g, g["in_guide"].dtype)
    assert set(back) == set(sd)
    for key, value in sd.items():
        np.testing.assert_array_equal(back[key], value)


# ---------------------------------------------------------------------------------------------
# structure: parameter counts of the SPEC tables, state-dict names


@pytest.mark.parametrize("cls, factor, count", [
    (pnn.PacJointUpsample, 4, 183_489), (pnn.PacJointUpsample, 8, 221_937),
    (pnn.PacJointUpsample, 16, 260_385), (pnn.PacJointUpsampleLite, 4, 55_509),
    (pnn.PacJointUpsampleLite, 8, 56_273), (pnn.PacJointUpsampleLite, 16, 55_777),
    (pnn.DJIF, 8, 56_323), (pnn.DJIFWide, 4, 233_475)])
def test_parameter_counts(cls, factor, count):
    model = cls(factor)
    params = nnx.state(model, nnx.Param)
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == count


def test_names_and_errors():
    names = set(convert.torch_variables(pnn.PacJointUpsample(4)))
    assert {"branch_t.conv1.weight", "branch_g.conv3.bias", "up_convts.1.weight",
            "branch_f.conv2.bias"} <= names
    assert {"branch_t.0.weight", "branch_t.4.bias", "branch_joint.4.bias"} <= set(
        convert.torch_variables(pnn.DJIF(4)))
    jbu = pnn.JointBilateral(4, 1, 9, 0.25, 8.0)
    assert set(convert.torch_variables(jbu)) == {"convt.weight"}
    assert isinstance(jbu.convt.weight, nnx.Param)
    assert convert.export_torch_weights(jbu)["convt.weight"].shape == (1, 1, 9, 9)
    with pytest.raises(ValueError, match="power of 2"):
        pnn.PacJointUpsample(6)
    with pytest.raises(ValueError, match="factor 4, 8 or 16"):
        pnn.PacJointUpsampleLite(2)
    with pytest.raises(ValueError, match="n_f_filters"):
        pnn.PacJointUpsample(4, n_f_filters=(3, 4))
    with pytest.raises(ValueError, match="kernel_size"):
        pnn.JointBilateral(8, 1, 5, 1.0, 1.0)
    model = pnn.PacJointUpsample(4, n_t_filters=2, n_g_filters=2, n_f_filters=2, k_ch=1)
    with pytest.raises(ValueError, match="guide must be factor x"):
        model(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 9, 8, 3)))
    with pytest.raises(ValueError, match="target_low"):
        model(jnp.zeros((2, 2, 1)), jnp.zeros((1, 8, 8, 3)))
    assert isinstance(pnn.upsample.create_model("JBU_9_8_0.25", 4), pnn.JointBilateral)
    assert pnn.upsample.create_model("JBU_9_8_0.25", 4).scale_color == 8.0
    with pytest.raises(ValueError, match="JBU_<kernel_size>"):
        pnn.upsample.create_model("JBU_9_x", 4)


# ---------------------------------------------------------------------------------------------
# equivalences


def _spatial_gaussian_upsample(low, factor, kernel_size, scale_space):
    """Independent NumPy joint-bilateral reference without colour: each high-resolution pixel
    is the Gaussian-weighted mean of the low-resolution samples (at ``f a + f/2 - 1``) within
    ``(k - 1)/2`` pixels of it in both axes."""
    b, h, w, c = low.shape
    r = (kernel_size - 1) // 2
    pos_y = factor * np.arange(h) + factor // 2 - 1
    pos_x = factor * np.arange(w) + factor // 2 - 1
    out = np.zeros((b, factor * h, factor * w, c))
    for i in range(factor * h):
        for j in range(factor * w):
            dy, dx = pos_y - i, pos_x - j
            wy = np.where(np.abs(dy) <= r, np.exp(-0.5 * (scale_space * dy) ** 2), 0.0)
            wx = np.where(np.abs(dx) <= r, np.exp(-0.5 * (scale_space * dx) ** 2), 0.0)
            weights = wy[:, None] * wx[None, :]
            out[:, i, j] = np.einsum("yx,byxc->bc", weights, low) / weights.sum()
    return out


@pytest.mark.parametrize("factor, k, s_s", [(4, 9, 0.3), (8, 15, 0.2)])
def test_joint_bilateral_without_colour_is_spatial_gaussian(factor, k, s_s):
    rng = np.random.default_rng(factor)
    low = rng.normal(size=(2, 3, 2, 2))
    guide = rng.uniform(size=(2, 3 * factor, 2 * factor, 3))
    model = pnn.JointBilateral(factor, 1, k, s_s, 0.0, param_dtype=jnp.float64)
    out = jax.jit(lambda lo, gu: model(lo, gu))(jnp.asarray(low), jnp.asarray(guide))
    expected = _spatial_gaussian_upsample(low, factor, k, s_s)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-12)
    # with colour the guide matters
    coloured = pnn.JointBilateral(factor, 1, k, s_s, 5.0, param_dtype=jnp.float64)
    assert np.abs(np.asarray(coloured(jnp.asarray(low), jnp.asarray(guide))) - expected).max() > 1e-3


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_bilinear_is_jax_image_resize(factor):
    rng = np.random.default_rng(factor)
    low = jnp.asarray(rng.normal(size=(2, 3, 5, 2)))
    out = pnn.Bilinear(factor)(low, None)
    ref = jax.image.resize(low, (2, 3 * factor, 5 * factor, 2), "bilinear")
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-12, atol=1e-12)
    # PyTorch's align_corners=False: the sample of pixel o is at (o + 0.5) / f - 0.5
    o = np.arange(5 * factor)
    src = np.clip((o + 0.5) / factor - 0.5, 0, 4)
    np.testing.assert_allclose(np.asarray(out[0, 0, :, 0]),
                               np.interp(src, np.arange(5), np.asarray(low[0, 0, :, 0])),
                               rtol=1e-12, atol=1e-12)


def test_resize_down_matches_pytorch_two_tap_rule():
    x = jnp.arange(16.0, dtype=jnp.float64).reshape(1, 16, 1, 1)
    down = ops.resize_bilinear(x, (4, 1))[0, :, 0, 0]
    # a 4x down-scale averages samples 4o+1 and 4o+2 (SPEC_wave2 introduction)
    np.testing.assert_allclose(np.asarray(down), [1.5, 5.5, 9.5, 13.5])


@functools.lru_cache(maxsize=None)
def _fold_runner(graphdef):
    return jax.jit(lambda state, lo, gu: nnx.merge(graphdef, state)(lo, gu))


@pytest.mark.parametrize("cls", ["PacJointUpsample", "DJIF", "JointBilateral"])
def test_channels_are_upsampled_independently(cls):
    rng = np.random.default_rng(1)
    low = jnp.asarray(rng.normal(size=(2, 2, 3, 2)))
    guide = jnp.asarray(rng.uniform(size=(2, 8, 12, 3)))
    model = {"PacJointUpsample": lambda: pnn.PacJointUpsample(
                 4, n_t_filters=3, n_g_filters=3, n_f_filters=3, k_ch=2, param_dtype=jnp.float64),
             "DJIF": lambda: pnn.DJIF(4, fs=(3, 1, 3), ns_tg=(4, 3, 1), ns_f=(3, 2),
                                      param_dtype=jnp.float64),
             "JointBilateral": lambda: pnn.JointBilateral(4, 1, 5, 0.5, 2.0,
                                                          param_dtype=jnp.float64)}[cls]()
    graphdef, state = nnx.split(model)
    run = _fold_runner(graphdef)
    both = run(state, low, guide)
    for c in range(2):
        single = run(state, low[..., c:c + 1], guide)
        np.testing.assert_allclose(np.asarray(both[..., c:c + 1]), np.asarray(single),
                                   rtol=1e-12, atol=1e-12)
