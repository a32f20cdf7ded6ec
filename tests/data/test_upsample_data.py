"""Joint-upsampling metrics, losses and input pipeline against the golden files
(``metrics_th_*``, ``upsample_preprocess_*``, ``upsample_trainloss_*``)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import convert, data, losses, metrics
from ppac_jax import nn as pnn
from tests import golden as G
from tests.golden_recipe import state_dict

F64_RTOL = 1e-12
F32_OUT_RTOL = 1e-5
F32_GRAD_RTOL = 1e-3


def _close(actual, expected, rtol, name):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: {actual.shape} != {expected.shape}"
    scale = max(float(np.abs(expected).max()), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale, err_msg=name)


def _rtols(name):
    return (F64_RTOL, F64_RTOL) if name.endswith("_f64.npz") else (F32_OUT_RTOL, F32_GRAD_RTOL)


@functools.lru_cache(maxsize=None)
def _metric_vjp(kind, small_flow):
    fn = (metrics.upsampling_rmse if kind == "rmse"
          else functools.partial(metrics.upsampling_epe, small_flow=small_flow))
    return jax.jit(jax.value_and_grad(fn))


@pytest.mark.parametrize("name", G.golden_files("metrics_th_*.npz")
                         or G.params_or_skip("__none__"))
def test_metrics_golden(name):
    g = G.Golden(name)
    kind = "rmse" if "th_rmse" in name else "epe"
    small_flow = float(g.meta.get("small_flow", -1.0))
    value, grad = _metric_vjp(kind, small_flow if kind == "epe" else None)(
        jnp.asarray(G.nchw(g["in_pred"])), jnp.asarray(G.nchw(g["in_gt"])))
    cot = float(g["cot_value"])
    out_rtol, grad_rtol = _rtols(name)
    _close(value, g["out_value"], out_rtol, f"{name}: value")
    _close(G.to_nchw(np.asarray(grad)) * cot, g["grad_in_pred"], grad_rtol, f"{name}: grad")


def test_metrics_ignore_non_finite_unknown_flow_and_zero_error():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(2, 4, 5, 2))
    pred = gt + rng.normal(size=gt.shape)
    gt_bad, pred_bad = gt.copy(), pred.copy()
    gt_bad[0, 1, 2] = [np.inf, 1.0]
    gt_bad[1, 3, 4] = [2e7, np.nan]
    pred_bad[0, 1, 2] = np.nan
    pred_bad[1, 3, 4] = np.inf
    gt_zero, pred_zero = gt.copy(), pred.copy()
    gt_zero[0, 1, 2] = pred_zero[0, 1, 2] = 0.0
    gt_zero[1, 3, 4] = pred_zero[1, 3, 4] = 0.0
    epe = jax.jit(jax.value_and_grad(metrics.upsampling_epe))
    v_bad, g_bad = epe(jnp.asarray(pred_bad), jnp.asarray(gt_bad))
    v_ref, g_ref = epe(jnp.asarray(pred_zero), jnp.asarray(gt_zero))
    assert np.isfinite(v_bad) and np.isfinite(np.asarray(g_bad)).all()
    np.testing.assert_allclose(v_bad, v_ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g_bad), np.asarray(g_ref), rtol=1e-12, atol=1e-15)
    # zero error: finite (zero) gradients, not NaN as the original
    for fn in (metrics.upsampling_epe, metrics.upsampling_rmse):
        grad = jax.grad(fn)(jnp.asarray(gt), jnp.asarray(gt))
        assert np.all(np.asarray(grad) == 0)
    with pytest.raises(ValueError, match="\\[B, H, W, 2\\]"):
        metrics.upsampling_epe(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="equal"):
        metrics.upsampling_rmse(np.zeros((1, 2, 2, 1)), np.zeros((1, 2, 3, 1)))


@pytest.mark.parametrize("name", G.golden_files("upsample_preprocess_*.npz")
                         or G.params_or_skip("__none__"))
def test_preprocess_golden(name):
    g = G.Golden(name)
    factor, mode, border = g.meta["factor"], g.meta["lowres_mode"], g.meta["output_crop"]
    target = np.moveaxis(g["in_target"], 0, -1)
    guidance = np.moveaxis(g["in_guidance"], 0, -1)
    low = data.get_lowres(target, factor, mode)
    assert low.dtype == np.float64
    _close(np.moveaxis(low, -1, 0), g["out_lowres"], 1e-12, f"{name}: get_lowres")
    t = data.AssembleJointUpsamplingInputs(factor, lowres_mode=mode, output_crop=border)
    out = t(guidance, target)
    for key, value in zip(("out_low_res", "out_guidance", "out_target"), out[:3]):
        assert value.dtype == np.float32, key
        _close(np.moveaxis(value, -1, 0), g[key], 1e-6, f"{name}: {key}")
    assert out[3].dtype == np.float32
    _close(out[3], g["out_raw_range"], 1e-6, f"{name}: raw_range")


def test_assemble_inputs_crop_flip_flat_and_errors():
    rng = np.random.default_rng(0)
    guidance = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    target = np.tile(np.arange(24.0)[None, :, None], (20, 1, 2))
    target[..., 1] = 3.0                         # a flat channel
    t = data.AssembleJointUpsamplingInputs(4, crop=8, flip=True, output_crop=1)
    low, guide, tgt, raw_range = t(guidance, target, rng=np.random.default_rng(5))
    assert low.shape == (2, 2, 2) and guide.shape == (8, 8, 3) and tgt.shape == (6, 6, 2)
    np.testing.assert_array_equal(raw_range[1], [2.5, 3.5])
    np.testing.assert_array_equal(low[..., 1], 0.5)
    assert low[..., 0].min() == 0 and low[..., 0].max() == 1
    # the same rng gives the same window; crop and guidance stay aligned
    again = t(guidance, target, rng=np.random.default_rng(5))
    for a, b in zip(again, (low, guide, tgt, raw_range)):
        np.testing.assert_array_equal(a, b)
    col = int(round(tgt[0, 0, 0]))   # target value = column index before the flip
    flipped = tgt[0, 0, 0] > tgt[0, -1, 0]
    x0 = col - 1 - (5 if flipped else 0) if flipped else col - 1
    window = guidance[:, x0:x0 + 8][..., ::-1, :] if flipped else guidance[:, x0:x0 + 8]
    assert any(np.array_equal(np.round(guide * 255).astype(np.uint8), window[y:y + 8])
               for y in range(13))
    zero = data.AssembleJointUpsamplingInputs(4, zero_guidance=True)(guidance, target[..., 0])
    assert zero[1].max() == 0 and zero[0].shape == (5, 6, 1)
    raw = data.AssembleJointUpsamplingInputs(4, normalize_target=False)(guidance, target)
    np.testing.assert_array_equal(raw[3], [[0, 1], [0, 1]])
    np.testing.assert_allclose(raw[0], data.get_lowres(target, 4, "center"))
    with pytest.raises(ValueError, match="multiple of factor"):
        data.AssembleJointUpsamplingInputs(4, crop=10)
    with pytest.raises(ValueError, match="lowres_mode"):
        data.AssembleJointUpsamplingInputs(4, lowres_mode="area")
    with pytest.raises(ValueError, match="same height"):
        t(guidance, target[:10])
    assert data.get_lowres(np.ones((17, 9)), 8, "bilinear").shape == (3, 2, 1)


@functools.lru_cache(maxsize=None)
def _trainloss_runner(graphdef, factor, loss_type):
    @jax.jit
    def run(params, rest, low, guide, target, raw_range):
        def loss(params, low, guide):
            model = nnx.merge(graphdef, params, rest)
            out = losses.center_crop(pnn.apply_model(model, low, guide, factor), target.shape[1:3])
            return losses.upsampling_loss(out, target, raw_range, loss_type), out
        (value, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
            params, low, guide)
        return value, out, grads
    return run


@pytest.mark.parametrize("name", G.golden_files("upsample_trainloss_*.npz")
                         or G.params_or_skip("__none__"))
def test_trainloss_golden(name):
    g = G.Golden(name)
    dtype = jnp.float64 if name.endswith("_f64.npz") else jnp.float32
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in g.meta["ctor_kwargs"].items()}
    model = {"DJIF": pnn.DJIF, "JointBilateral": pnn.JointBilateral}[g.meta["model"]](
        g.meta["factor"], **kwargs, param_dtype=dtype)
    convert.load_torch_weights(model, state_dict(g, g["in_guide"].dtype))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    run = _trainloss_runner(graphdef, g.meta["factor"], g.meta["loss_type"])
    value, out, (gparams, g_low, g_guide) = run(
        params, rest, jnp.asarray(G.nchw(g["in_lres"])), jnp.asarray(G.nchw(g["in_guide"])),
        jnp.asarray(G.nchw(g["in_target"])), jnp.asarray(g["in_raw_range"]))
    out_rtol, grad_rtol = _rtols(name)
    cot = float(g["cot_loss"])
    _close(value * cot, g.meta["loss_value"], out_rtol, f"{name}: L = loss * cot")
    _close(value, g["out_loss"], out_rtol, f"{name}: loss value")
    _close(G.to_nchw(np.asarray(out)), g["out_output"], out_rtol, f"{name}: output")
    _close(G.to_nchw(np.asarray(g_low)) * cot, g["grad_in_lres"], grad_rtol, f"{name}: grad lres")
    _close(G.to_nchw(np.asarray(g_guide)) * cot, g["grad_in_guide"], grad_rtol,
           f"{name}: grad guide")
    grads = convert.export_torch_gradients(model, gparams)
    for key, expected in ((k[len("grad_param_"):], g[k]) for k in g.arrays
                          if k.startswith("grad_param_")):
        _close(grads[key] * cot, expected, grad_rtol, f"{name}: grad {key}")
