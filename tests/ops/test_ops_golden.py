"""ppac_jax.ops against the reference golden vectors (float64): outputs and every gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppac_jax import ops
from ppac_jax.nn.layers import parse_kernel_type
from tests import golden as G

IMPLS = ["patches", "loop"]


def _kernel_options(args):
    """pac_kernel keyword options from a reference packernel2d argument dict."""
    kt = parse_kernel_type(args.get("kernel_type", "gaussian"))
    return dict(
        stride=args.get("stride", 1), padding=args.get("padding", 0),
        dilation=args.get("dilation", 1), output_padding=args.get("output_padding", 0),
        transposed=args.get("transposed", False), kernel_type=kt["kernel_type"], asym=kt["asym"],
        channel_wise=args.get("channel_wise", False),
        normalize=args.get("normalize_kernel", False))


def _check_case(g, fn, leaves, consts, outputs):
    """Run ``fn(leaves, consts)`` jitted with its VJP; compare outputs and gradients.

    ``leaves``/``consts``: ``{name: (array in our layout, to_torch_layout)}``;
    ``outputs``: ``{name: (to_our_layout, from_our_layout)}``.
    """
    leaf_vals = {k: jnp.asarray(v[0]) for k, v in leaves.items()}
    const_vals = {k: jnp.asarray(v) for k, v in consts.items()}
    cot_names = g.meta["cotangent_outputs"]
    cots = {k: jnp.asarray(outputs[k][0](g[f"cot_{k}"])) for k in cot_names}

    @jax.jit
    def run(leaf_vals, const_vals, cots):
        out, vjp = jax.vjp(lambda lv: fn(lv, const_vals), leaf_vals)
        return out, vjp({k: cots[k] if k in cots else jnp.zeros_like(v)
                         for k, v in out.items()})[0]

    out, grads = run(leaf_vals, const_vals, cots)
    for k, (_, back) in outputs.items():
        if f"out_{k}" in g:
            G.assert_close(back(np.asarray(out[k])), g[f"out_{k}"], name=f"{g.name}: out_{k}")
    for k, (_, back) in leaves.items():
        G.assert_close(back(np.asarray(grads[k])), g[f"grad_{k}"], name=f"{g.name}: grad_{k}")


def _ident(a):
    return a


def _smooth(a):
    return a[0, 0]


def _unsmooth(a):
    return a[None, None]


@pytest.mark.parametrize("name", G.params_or_skip("packernel2d_*_f64.npz"))
def test_pac_kernel_golden(name):
    g = G.Golden(name)
    args = g.meta["args"]
    opts = _kernel_options(args)
    cw = opts["channel_wise"]
    leaves = {"in_input": (G.nchw(g["in_input"]), G.to_nchw)}
    consts = {}
    for src in ("param", "buf"):
        for pname in ("smooth_kernel", "inv_alpha", "inv_lambda"):
            key = f"{src}_{pname}"
            if key in g:
                val = _smooth(g[key]) if pname == "smooth_kernel" else g[key]
                if src == "param":
                    leaves[key] = (val, _unsmooth if pname == "smooth_kernel" else _ident)
                else:
                    consts[key] = val
    if "in_mask" in g:
        consts["in_mask"] = G.nchw(g["in_mask"])

    def fn(lv, cv):
        vals = {**lv, **cv}

        def pick(pname):
            return vals.get(f"param_{pname}", vals.get(f"buf_{pname}"))
        kern, mask = ops.pac_kernel(vals["in_input"], args["kernel_size"],
                                    inv_alpha=pick("inv_alpha"), inv_lambda=pick("inv_lambda"),
                                    smooth_kernel=pick("smooth_kernel"), mask=vals.get("in_mask"),
                                    **opts)
        out = {"kernel": kern}
        if mask is not None:
            out["output_mask"] = mask
        return out

    def mask_back(m):
        # ours [B, Ho, Wo, 1] -> reference [B, 1, 1, 1, Ho, Wo]
        return np.transpose(m, (0, 3, 1, 2))[:, :, None, None]

    outputs = {"kernel": (lambda k: G.kernel(k, cw), G.to_kernel),
               "output_mask": (None, mask_back)}
    _check_case(g, fn, leaves, consts, outputs)


def _op_case(g, impl):
    """Leaves and function for the pacconv2d / pacconv_transpose2d / pacpool2d files."""
    op = g.meta["op"]
    args = dict(g.meta["args"])
    args.pop("native_impl", None)
    kargs = g.meta.get("kernel_args")
    cw = bool(kargs and kargs.get("channel_wise"))
    leaves = {"in_input": (G.nchw(g["in_input"]), G.to_nchw)}
    if "in_kernel" in g:
        cw = g["in_kernel"].shape[1] > 1
        leaves["in_kernel"] = (G.kernel(g["in_kernel"], cw), G.to_kernel)
    if "in_guidance" in g:
        leaves["in_guidance"] = (G.nchw(g["in_guidance"]), G.to_nchw)
    if "param_weight" in g:
        if op == "pacconv_transpose2d":
            leaves["param_weight"] = (G.iohw(g["param_weight"]), G.to_iohw)
        else:
            leaves["param_weight"] = (G.oihw(g["param_weight"]), G.to_oihw)
    if "param_bias" in g:
        leaves["param_bias"] = (g["param_bias"], _ident)

    def fn(lv, cv):
        if "in_kernel" in lv:
            kern = lv["in_kernel"]
        else:
            kopts = _kernel_options(kargs)
            kern, _ = ops.pac_kernel(lv["in_guidance"], kargs["kernel_size"], **kopts)
        if op == "pacconv2d":
            y = ops.pac_conv2d(lv["in_input"], kern, lv["param_weight"], lv.get("param_bias"),
                               impl=impl, **args)
        elif op == "pacconv_transpose2d":
            y = ops.pac_conv_transpose2d(lv["in_input"], kern, lv["param_weight"],
                                         lv.get("param_bias"), impl=impl, **args)
        else:
            y = ops.pac_pool2d(lv["in_input"], kern, impl=impl, **args)
        return {"output": y}

    return fn, leaves, {"output": (G.nchw, G.to_nchw)}


def _op_golden_params():
    """Every op golden file with ``patches``; ``loop`` on the 3x3 files of every op and option,
    which covers its code paths (tests/ops/test_impls.py checks it against ``patches`` on more
    shapes, the fused tests on every file)."""
    names = (G.params_or_skip("pacconv2d_*_f64.npz")
             + G.params_or_skip("pacconv_transpose2d_*_f64.npz")
             + G.params_or_skip("pacpool2d_*_f64.npz"))
    params = []
    for impl in IMPLS:
        for name in names:
            if not isinstance(name, str):          # golden files missing: a skipped parameter
                params.append(pytest.param(None, impl, marks=name.marks))
            elif impl == "patches" or "_k3_" in name:
                params.append(pytest.param(name, impl, id=f"{name}-{impl}"))
    return params


@pytest.mark.parametrize("name,impl", _op_golden_params())
def test_pac_ops_golden(name, impl):
    g = G.Golden(name)
    fn, leaves, outputs = _op_case(g, impl)
    _check_case(g, fn, leaves, {}, outputs)
