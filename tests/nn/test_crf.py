"""PAC-CRF (ops.crf + nn.crf) against the reference golden vectors: outputs and all gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import ops
from ppac_jax.convert import load_torch_weights
from ppac_jax.nn.crf import PacCRF, PacCRFLoose
from tests import golden as G


def _tolerances(name, kind):
    """(rtol, atol) per golden/README §4; f32 compared relative to max|.| of each array."""
    if name.endswith("_f64.npz"):
        if "convcrf_like" in name:  # float32 position features inside the f64 reference
            return 1e-6, 1e-7
        return 1e-9, 1e-11
    return (1e-5, 3e-6) if kind == "out" else (1e-4, 1e-4)


def _close(actual, expected, name, kind, what):
    rtol, atol = _tolerances(name, kind)
    scale = max(float(np.max(np.abs(expected))), 1e-30) if name.endswith("_f32.npz") else 1.0
    G.assert_close(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=rtol,
                   atol=atol * scale, name=f"{name}: {what}")


def _build(g):
    args = dict(g.meta["module_args"])
    args.pop("native_impl", None)
    kernels = args.pop("pairwise_kernels")
    cls = PacCRFLoose if g.meta["op"] == "PacCRFLoose" else PacCRF
    dtype = jnp.float64 if g.name.endswith("_f64.npz") else jnp.float32
    crf = cls(pairwise_kernels=kernels, param_dtype=dtype, **args)
    state = {k.split("_", 1)[1]: v for k, v in g.arrays.items()
             if k.startswith("param_") or k.startswith("buf_")}
    load_torch_weights(crf, state, strict=True)
    return crf


def _edge_inputs(g):
    """(differentiable inputs {name: NHWC}, function building the crf's edge argument)."""
    if "in_image" in g:  # ConvCRF-like: [YXRGB(image), positions]
        def edge(leaves):
            img = leaves["in_image"]
            return [ops.yxrgb_features(img, yx_scale=80.0, rgb_scale=13.0),
                    ops.position_features(img.shape[1:3], scales=3.0, batch=img.shape[0])]
        return {"in_image": G.nchw(g["in_image"])}, edge
    if "in_edge_feat" in g:
        return {"in_edge_feat": G.nchw(g["in_edge_feat"])}, lambda lv: lv["in_edge_feat"]
    names = sorted((k for k in g.arrays if k.startswith("in_edge_feat_")),
                   key=lambda k: int(k.rsplit("_", 1)[1]))
    return ({k: G.nchw(g[k]) for k in names}, lambda lv: [lv[k] for k in names])


def _torch_grads(crf, grads):
    """Gradient state -> {original name: array in the original layout}."""
    paths = {}
    for path, node in nnx.iter_graph(crf):
        if isinstance(node, nnx.Variable) and "torch_layout" in node.get_metadata():
            paths[tuple(path)] = ".".join(str(p) for p in path)
    out = {}
    for path, value in nnx.to_flat_state(grads):
        if tuple(path) in paths:
            v = np.asarray(value[...] if isinstance(value, nnx.Variable) else value)
            if v.ndim == 4:
                v = G.to_oihw(v)
            out[paths[tuple(path)]] = v
    return out


@pytest.mark.parametrize("name", G.params_or_skip("paccrf*.npz"))
def test_paccrf_golden(name):
    g = G.Golden(name)
    crf = _build(g)
    graphdef, params, rest = nnx.split(crf, nnx.Param, ...)
    leaves, edge_fn = _edge_inputs(g)
    leaves["in_unary"] = G.nchw(g["in_unary"])
    leaves = {k: jnp.asarray(v) for k, v in leaves.items()}
    cot = jnp.asarray(G.nchw(g["cot_output"]))

    @jax.jit
    def run(params, leaves):
        def f(params, leaves):
            model = nnx.merge(graphdef, params, rest)
            return model(leaves["in_unary"], edge_fn(leaves))
        out, vjp = jax.vjp(f, params, leaves)
        return (out,) + vjp(cot)

    out, g_params, g_leaves = run(params, leaves)
    _close(G.to_nchw(np.asarray(out)), g["out_output"], name, "out", "output")
    for k, v in g_leaves.items():
        _close(G.to_nchw(np.asarray(v)), g[f"grad_{k}"], name, "grad", f"grad_{k}")
    torch_grads = _torch_grads(crf, g_params)
    expected = {k[len("grad_param_"):]: v for k, v in g.arrays.items()
                if k.startswith("grad_param_")}
    assert set(torch_grads) == set(expected), (sorted(torch_grads), sorted(expected))
    for k, v in expected.items():
        _close(torch_grads[k], v, name, "grad", f"grad_param_{k}")
    for k in g.meta.get("grads_none", []):
        if k.startswith("param_"):  # constants of the original: exactly zero here
            assert np.all(torch_grads[k[len("param_"):]] == 0), k


@pytest.mark.parametrize("name", G.params_or_skip("create_YXRGB_*.npz"))
def test_yxrgb_golden(name):
    g = G.Golden(name)
    img = jnp.asarray(G.nchw(g["in_image"]))
    scales = jnp.asarray(g["param_scales"])
    pos_plain = ops.position_features((4, 3))
    pos_scaled = ops.position_features((5, 6), scales=[2.0, 3.0], batch=2)
    assert pos_plain.dtype == jnp.float32 and pos_scaled.dtype == jnp.float32
    np.testing.assert_array_equal(G.to_nchw(np.asarray(pos_plain)), g["out_pos_plain"])
    np.testing.assert_array_equal(G.to_nchw(np.asarray(pos_scaled)), g["out_pos_scaled"])

    def f(img, scales):
        return (ops.yxrgb_features(img, yx_scale=80.0, rgb_scale=13.0),
                ops.yxrgb_features(img, scales=scales))

    (a, b), vjp = jax.vjp(f, img, scales)
    assert a.dtype == img.dtype
    cots = (jnp.asarray(G.nchw(g["cot_yxrgb_float"])), jnp.asarray(G.nchw(g["cot_yxrgb_scales"])))
    d_img, d_scales = vjp(cots)
    tol = dict(rtol=1e-12, atol=1e-12) if name.endswith("_f64.npz") else dict(rtol=1e-6, atol=1e-6)
    G.assert_close(G.to_nchw(np.asarray(a)), g["out_yxrgb_float"], name="yxrgb_float", **tol)
    G.assert_close(G.to_nchw(np.asarray(b)), g["out_yxrgb_scales"], name="yxrgb_scales", **tol)
    G.assert_close(G.to_nchw(np.asarray(d_img)), g["grad_in_image"], name="grad_in_image", **tol)
    G.assert_close(np.asarray(d_scales), g["grad_param_scales"], name="grad_param_scales",
                   rtol=1e-5 if name.endswith("_f32.npz") else 1e-12, atol=1e-5)
