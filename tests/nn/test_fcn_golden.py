"""FCN8s / FCN8sAltPad / FCN8sPac against the original pacnet models (``fcn8s_*`` golden files).

Real widths (134M parameters, drawn by the golden recipe), eval mode; outputs, input gradients
and every parameter gradient (whole, or subsampled + Frobenius norm for the large ones).
Tolerances (issue 15): float64 1e-12 of max|ref|; float32 outputs 1e-5, gradients 5e-2.
"""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from ppac_jax import convert, nn
from tests import golden as G
from tests.golden_recipe import recipe_uniform, run_summary, state_dict

MODELS = {"FCN8s": nn.FCN8s, "FCN8sAltPad": nn.FCN8sAltPad, "FCN8sPac": nn.FCN8sPac}


@functools.lru_cache(maxsize=1)
def _model_and_weights(stem):
    """One module per network and the float64 state dict of its file pair (the f32 and f64
    twins share the recipe keys and load their weights into the same module)."""
    g = G.Golden(stem + "_f64.npz")
    model = MODELS[g.meta["model"]](g.meta["num_classes"])
    model.eval()
    return model, state_dict(g, np.float64, model)


def _close(actual, expected, rel, name):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel:g} * max|ref| {scale:.3g}"


@pytest.mark.parametrize("name", G.params_or_skip("fcn8s_*_B*.npz"))
def test_fcn8s_golden(name):
    g = G.Golden(name)
    f64 = name.endswith("_f64.npz")
    dtype = np.float64 if f64 else np.float32
    stem = name[: -len("_f64.npz")]
    model, sd64 = _model_and_weights(stem)
    sd = {k: v.astype(dtype, order="K") for k, v in sd64.items()}
    convert.load_torch_weights(model, sd)   # strict: every parameter by its original name
    assert set(convert.torch_variables(model)) == set(g.meta["param_names"])
    x = jnp.asarray(G.nchw(g["in_image"]))
    cot = jnp.asarray(G.nchw(g["cot_output"]))
    steps = {k: v for k, v in g.meta["grad_subsample"].items()}
    out, d_x, grads, norms = run_summary(model, x, cot, steps)
    assert out.dtype == dtype

    out_tol, grad_tol = (1e-12, 1e-12) if f64 else (1e-5, 5e-2)
    _close(G.to_nchw(np.asarray(out)), g["out_output"], out_tol, "output")
    _close(G.to_nchw(np.asarray(d_x)), g["grad_in_image"], grad_tol, "grad_in_image")
    checked = set()
    for pname in g.meta["param_names"]:
        if pname in steps:
            _close(grads[pname], g[f"gsub_param_{pname}"], grad_tol, f"gsub {pname}")
        else:
            _close(grads[pname], g[f"grad_param_{pname}"], grad_tol, f"grad {pname}")
        ref_norm = g.meta["grad_norms"][pname]
        assert abs(float(norms[pname]) - ref_norm) <= grad_tol * max(ref_norm, 1e-30) \
            or ref_norm == 0 and float(norms[pname]) == 0, (pname, float(norms[pname]), ref_norm)
        checked.add(pname)
    assert checked == set(g.meta["param_names"])
    for none in g.meta["grads_none"]:
        assert float(norms[none[len("param_"):]]) == 0.0


def test_upsampling_weight_golden():
    g = G.Golden("fcn8s_upsampling_weight_f32.npz") if G.golden_files(
        "fcn8s_upsampling_weight_f32.npz") else pytest.skip(G.SKIP_REASON)
    for k in (3, 4, 5, 16):
        w = nn.fillers.upsampling_weight(4, 4, k)
        assert w.shape == (k, k, 4, 4) and w.dtype == np.float32
        for c in range(4):
            np.testing.assert_array_equal(w[:, :, c, c], g[f"out_filt_k{k}"])
        off = w * (1 - np.eye(4, dtype=np.float32))[None, None]
        assert not off.any()


def test_recipe_matches_stored_parameters():
    """The recipe generator reproduces the parameters that the files also store."""
    names = G.golden_files("fcn8s_plain_*_f64.npz")
    if not names:
        pytest.skip(G.SKIP_REASON)
    g = G.Golden(names[0])
    for pname, r in g.meta["param_recipe"].items():
        if f"param_{pname}" in g:
            np.testing.assert_array_equal(
                recipe_uniform(r["key"], g.meta["param_shapes"][pname], r["lo"], r["hi"]),
                g[f"param_{pname}"])
