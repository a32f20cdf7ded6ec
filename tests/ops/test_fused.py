"""Fused PAC ops against the two-step path (pac_kernel + PAC op) and the golden vectors."""

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppac_jax import ops
from ppac_jax.ops.tiling import Tiling
from tests import golden as G
from tests.ops.test_ops_golden import _check_case, _kernel_options

RTOL = 1e-9


def _random(seed):
    rng = np.random.default_rng(seed)
    return lambda *shape: jnp.asarray(rng.standard_normal(shape)), rng


def _compare(two_step, fused, args, seed, *more):
    """Outputs and every gradient (vjp with a random cotangent) of ``fused`` (and of each
    function in ``more``) against ``two_step``, float64, in one compiled program."""
    r, _ = _random(seed)
    cot = jax.tree_util.tree_map(lambda a: r(*a.shape), jax.eval_shape(two_step, *args))

    @jax.jit
    def all_of(args, cot):
        results = []
        for fn in (two_step, fused, *more):
            out, vjp = jax.vjp(fn, *args)
            results.append((out, vjp(cot)))
        return results

    res_a, *others = all_of(args, cot)
    leaves_a = jax.tree_util.tree_leaves(res_a)
    for n, res_b in enumerate(others):
        leaves_b = jax.tree_util.tree_leaves(res_b)
        assert len(leaves_a) == len(leaves_b)
        for i, (a, b) in enumerate(zip(leaves_a, leaves_b)):
            assert a.shape == b.shape, i
            scale = float(jnp.max(jnp.abs(a))) + 1e-30
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=RTOL,
                                       atol=RTOL * scale, err_msg=f"function {n + 1}, leaf {i}")


# (kernel, stride, padding, dilation, shared, kernel_type, asym, smooth, normalize, mask)
CONV_CASES = [
    (5, 2, 2, 1, False, "inv", True, False, True, False),
    (3, 2, 2, 2, True, "gaussian", False, True, False, True),
    (5, 1, 2, 1, False, "inv", False, False, True, True),
    ((3, 5), (2, 1), (0, 2), (1, 2), True, "gaussian", True, True, True, False),
    (7, 3, 3, 1, False, "gaussian", False, False, False, True),
]
# (plain gaussian, stride 1 is covered by the golden files below)


def _kernel_kwargs(kernel_type, asym, smooth, normalize, alpha, lam, smooth_kernel):
    kw = dict(kernel_type=kernel_type, asym=asym, normalize=normalize)
    if kernel_type == "inv":
        kw.update(inv_alpha=alpha, inv_lambda=lam)
    if smooth:
        kw.update(smooth_kernel=smooth_kernel)
    return kw


@pytest.mark.parametrize("case", CONV_CASES)
def test_fused_conv_matches_two_step(case):
    k, s, p, d, shared, kt, asym, smooth, normalize, with_mask = case
    r, rng = _random(zlib.crc32(repr(case).encode()))
    kk = k if isinstance(k, tuple) else (k, k)
    b, h, w, c, o, depth = 2, 10, 11, 3, 4, 2
    x, guide = r(b, h, w, c), r(b, h, w, depth)
    weight = r(*kk, 1, 1) if shared else r(*kk, c, o)
    bias = r(c if shared else o)
    mask = jnp.asarray((rng.random((b, h, w, 1)) > 0.3).astype(np.float64)) if with_mask else None
    smooth_kernel = jnp.abs(r(3, 3))
    alpha, lam = jnp.asarray(0.3), jnp.asarray(0.7)
    geom = dict(stride=s, padding=p, dilation=d)

    def two_step(x, guide, weight, bias, alpha, lam, smooth_kernel):
        kw = _kernel_kwargs(kt, asym, smooth, normalize, alpha, lam, smooth_kernel)
        kern, out_mask = ops.pac_kernel(guide, kk, mask=mask, **geom, **kw)
        y = ops.pac_conv2d(x, kern, weight, bias, shared_filters=shared, impl="patches", **geom)
        return (y, out_mask) if with_mask else y

    def fused(x, guide, weight, bias, alpha, lam, smooth_kernel):
        kw = _kernel_kwargs(kt, asym, smooth, normalize, alpha, lam, smooth_kernel)
        return ops.fused_pac_conv2d(x, guide, weight, bias, shared_filters=shared, mask=mask,
                                    **geom, **kw)

    _compare(two_step, fused, (x, guide, weight, bias, alpha, lam, smooth_kernel), seed=1)


# (kernel, stride, padding, output_padding, dilation, shared, kernel_type, normalize, mask)
TRANSPOSE_CASES = [
    (3, 2, 1, 1, 1, False, "gaussian", False, False),
    (5, 2, 2, 1, 1, True, "inv", True, False),
    (3, 2, 2, 1, 2, False, "gaussian", False, True),
    (5, 3, 1, 0, 1, False, "gaussian", True, True),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES)
def test_fused_transpose_matches_two_step(case):
    k, s, p, op, d, shared, kt, normalize, with_mask = case
    r, rng = _random(zlib.crc32(repr(case).encode()))
    b, h, w, c, o, depth = 2, 5, 4, 3, 2, 2
    ho, wo = ((n - 1) * s - 2 * p + d * (k - 1) + 1 + op for n in (h, w))
    x, guide = r(b, h, w, c), r(b, ho, wo, depth)
    weight = r(k, k, 1, 1) if shared else r(k, k, c, o)
    mask = jnp.asarray((rng.random((b, h, w, 1)) > 0.3).astype(np.float64)) if with_mask else None
    geom = dict(stride=s, padding=p, output_padding=op, dilation=d)
    alpha, lam = jnp.asarray(0.2), jnp.asarray(0.4)

    def kw(alpha, lam):
        return _kernel_kwargs(kt, False, False, normalize, alpha, lam, None)

    def two_step(x, guide, weight, alpha, lam):
        kern, out_mask = ops.pac_kernel(guide, k, transposed=True, mask=mask, **geom,
                                        **kw(alpha, lam))
        y = ops.pac_conv_transpose2d(x, kern, weight, shared_filters=shared, impl="patches",
                                     **geom)
        return (y, out_mask) if with_mask else y

    def fused(x, guide, weight, alpha, lam):
        return ops.fused_pac_conv_transpose2d(x, guide, weight, shared_filters=shared, mask=mask,
                                              **geom, **kw(alpha, lam))

    _compare(two_step, fused, (x, guide, weight, alpha, lam), seed=2)


def _ppac_weights(r, shared, k, c, o):
    """``(|W|, W_norm, bias)`` of a PPAC layer: ``[k, k, 1, 1]`` shared or ``[k, k, c, o]``."""
    weight = jnp.abs(r(k, k, 1, 1) if shared else r(k, k, c, o))
    return weight, r(*weight.shape) * 0.3, r(c if shared else o)


def _unnormalized_kwargs(kernel_type, alpha, lam):
    """Kernel options of the PPAC ops (which take no ``normalize``)."""
    kwargs = _kernel_kwargs(kernel_type, False, False, False, alpha, lam, None)
    kwargs.pop("normalize")
    return kwargs


@pytest.mark.parametrize("shared,k,s,p,kt,planar", [
    (True, 5, 1, 2, "gaussian", False), (False, 3, 1, 0, "gaussian", False),
    (False, 3, 2, 1, "inv", False), (True, 3, 1, 1, "inv", False),
    # per-channel sums on planes (large images take them; forced here)
    (True, 5, 1, 2, "gaussian", True), (True, 3, 2, 1, "inv", True)])
def test_fused_prob_matches_two_step(shared, k, s, p, kt, planar):
    tiling = Tiling(planar=True) if planar else None
    r, rng = _random(k * 10 + s + int(shared))
    b, h, w, c, o, depth = 2, 9, 8, 3, 4, 2
    x, guide = r(b, h, w, c), r(b, h, w, depth)
    conf = jnp.asarray(rng.random((b, h, w, 1)))
    weight, weight_norm, bias = _ppac_weights(r, shared, k, c, o)
    alpha, lam = jnp.asarray(0.3), jnp.asarray(0.5)
    geom = dict(stride=s, padding=p)
    kw = functools.partial(_unnormalized_kwargs, kt)

    def two_step(x, conf, guide, weight, weight_norm, bias, alpha, lam):
        kern, _ = ops.pac_kernel(guide, k, **geom, **kw(alpha, lam))
        return ops.prob_pac_conv2d(x, conf, kern, weight, weight_norm, bias,
                                   shared_filters=shared, impl="patches", **geom)

    def fused(x, conf, guide, weight, weight_norm, bias, alpha, lam):
        return ops.fused_prob_pac_conv2d(x, conf, guide, weight, weight_norm, bias,
                                         shared_filters=shared, tiling=tiling, **geom,
                                         **kw(alpha, lam))

    _compare(two_step, fused, (x, conf, guide, weight, weight_norm, bias, alpha, lam), seed=3)


@pytest.mark.parametrize("shared,k,s,p,kt,planar", [
    (False, 3, 1, 1, "gaussian", False), (True, 5, 2, 1, "inv", False),
    (True, 3, 1, 1, "gaussian", True)])
def test_fused_normalized_matches_two_step(shared, k, s, p, kt, planar):
    """The denominator counts out-of-image taps (its input is padded with ones)."""
    tiling = Tiling(planar=True) if planar else None
    r, _ = _random(k * 100 + s + int(shared))
    b, h, w, c, o, depth = 2, 8, 9, 3, 2, 2
    x, guide = r(b, h, w, c), r(b, h, w, depth)
    weight, weight_norm, bias = _ppac_weights(r, shared, k, c, o)
    alpha, lam = jnp.asarray(0.3), jnp.asarray(0.5)
    geom = dict(stride=s, padding=p)
    kw = functools.partial(_unnormalized_kwargs, kt)

    def two_step(x, guide, weight, weight_norm, bias, alpha, lam):
        kern, _ = ops.pac_kernel(guide, k, **geom, **kw(alpha, lam))
        return ops.normalized_pac_conv2d(x, kern, weight, weight_norm, bias,
                                         shared_filters=shared, impl="patches", **geom)

    def fused(x, guide, weight, weight_norm, bias, alpha, lam):
        return ops.fused_normalized_pac_conv2d(
            x, guide, weight, weight_norm, bias, shared_filters=shared, tiling=tiling, **geom,
            **kw(alpha, lam))

    _compare(two_step, fused, (x, guide, weight, weight_norm, bias, alpha, lam), seed=5)


@pytest.mark.parametrize("shared,transposed,kt,normalize,mask", [
    (True, False, "inv", True, True), (False, False, "gaussian", False, True),
    (True, True, "gaussian", True, False)])
def test_fused_channel_wise_matches_two_step(shared, transposed, kt, normalize, mask):
    """One kernel per channel (per-channel inv parameters): pac_kernel(channel_wise=True)."""
    r, rng = _random(7 + 2 * int(shared) + int(transposed))
    b, c, o, k = 2, 3, 2, 3
    geom = dict(stride=2, padding=1, dilation=1)
    if transposed:
        geom["output_padding"] = 1
    x = r(b, 4, 5, c) if transposed else r(b, 9, 8, c)
    guide = r(b, 8, 10, c) if transposed else r(b, 9, 8, c)
    valid = jnp.asarray((rng.random((*x.shape[:3], 1)) > 0.3).astype(np.float64))
    valid = valid if mask else None
    weight = r(k, k, 1, 1) if shared else r(k, k, c, o)
    bias = r(c if shared else o)
    alpha, lam = jnp.asarray([0.3, 0.2, 0.4]), jnp.asarray(0.5)

    def kw(alpha, lam):
        return _kernel_kwargs(kt, False, False, normalize, alpha, lam, None)

    def two_step(x, guide, weight, bias, alpha, lam):
        kern, out_mask = ops.pac_kernel(guide, k, transposed=transposed, channel_wise=True,
                                        mask=valid, **geom, **kw(alpha, lam))
        op = ops.pac_conv_transpose2d if transposed else ops.pac_conv2d
        y = op(x, kern, weight, bias, shared_filters=shared, impl="patches", **geom)
        return y if valid is None else (y, out_mask)

    def fused(x, guide, weight, bias, alpha, lam):
        op = ops.fused_pac_conv_transpose2d if transposed else ops.fused_pac_conv2d
        return op(x, guide, weight, bias, shared_filters=shared, channel_wise=True, mask=valid,
                  **geom, **kw(alpha, lam))

    _compare(two_step, fused, (x, guide, weight, bias, alpha, lam), seed=6)
    with pytest.raises(ValueError, match="one guide channel per x channel"):
        ops.fused_pac_conv2d(r(1, 5, 5, 2), r(1, 5, 5, 3), r(3, 3, 1, 1), shared_filters=True,
                             channel_wise=True)


def test_fused_bfloat16_computes_in_float32():
    r, _ = _random(4)
    x, guide, weight = r(1, 12, 12, 4), r(1, 12, 12, 3), r(3, 3, 4, 5) * 0.3
    ref = ops.fused_pac_conv2d(x.astype(jnp.float32), guide.astype(jnp.float32),
                               weight.astype(jnp.float32), padding=1)
    low = jax.jit(lambda *a: ops.fused_pac_conv2d(*a, padding=1))(
        x.astype(jnp.bfloat16), guide.astype(jnp.bfloat16), weight.astype(jnp.bfloat16))
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), np.asarray(ref), rtol=0.05, atol=0.05)


def test_fused_validation_errors():
    r, _ = _random(5)
    x, weight = r(1, 6, 6, 2), r(3, 3, 2, 2)
    with pytest.raises(ValueError, match="guide"):
        ops.fused_pac_conv2d(x, r(1, 5, 6, 1), weight)
    with pytest.raises(ValueError, match="kernel_type"):
        ops.fused_pac_conv2d(x, r(1, 6, 6, 1), weight, kernel_type="box")
    with pytest.raises(ValueError, match="inv_alpha"):
        ops.fused_pac_conv2d(x, r(1, 6, 6, 1), weight, kernel_type="inv")
    with pytest.raises(ValueError, match="mask"):
        ops.fused_pac_conv2d(x, r(1, 6, 6, 1), weight, mask=r(1, 6, 5, 1))
    with pytest.raises(ValueError, match="guide"):
        ops.fused_pac_conv_transpose2d(x, r(1, 6, 6, 1), weight, stride=2)
    with pytest.raises(ValueError, match="confidence"):
        ops.fused_prob_pac_conv2d(x, r(1, 6, 6, 2), r(1, 6, 6, 1), weight, weight)


# --------------------------------------------------------------------------------------------
# golden vectors of the guided (function-path) PAC convolutions


def _fused_golden_names():
    names = G.params_or_skip("pacconv2d_*_f64.npz") + G.params_or_skip(
        "pacconv_transpose2d_*_f64.npz")
    return [n for n in names if not (isinstance(n, str) and "precomputed" in n)]


@pytest.mark.parametrize("name", _fused_golden_names())
def test_fused_golden(name):
    g = G.Golden(name)
    op = g.meta["op"]
    args = dict(g.meta["args"])
    args.pop("native_impl", None)
    kargs = g.meta["kernel_args"]
    kopts = _kernel_options(kargs)
    if kopts.pop("channel_wise"):
        pytest.skip("channel-wise kernels are not part of the fused conv")
    for key in ("stride", "padding", "dilation", "output_padding", "transposed"):
        kopts.pop(key)
    leaves = {"in_input": (G.nchw(g["in_input"]), G.to_nchw),
              "in_guidance": (G.nchw(g["in_guidance"]), G.to_nchw)}
    if op == "pacconv_transpose2d":
        leaves["param_weight"] = (G.iohw(g["param_weight"]), G.to_iohw)
    else:
        leaves["param_weight"] = (G.oihw(g["param_weight"]), G.to_oihw)
    if "param_bias" in g:
        leaves["param_bias"] = (g["param_bias"], lambda a: a)

    def fn(lv, cv):
        f = ops.fused_pac_conv_transpose2d if op == "pacconv_transpose2d" else ops.fused_pac_conv2d
        return {"output": f(lv["in_input"], lv["in_guidance"], lv["param_weight"],
                            lv.get("param_bias"), **args, **kopts)}

    _check_case(g, fn, leaves, {}, {"output": (G.nchw, G.to_nchw)})


@pytest.mark.parametrize("case", [
    (5, 1, 2, 1, False, True, True, 37),
    (3, 2, 1, 2, True, False, True, 37),
    # stride 1 pads inside the loop: halo (16 rows) wider than a strip (8 rows) ...
    (5, 1, 8, 4, False, False, True, 37),
    # ... and a strip with its halo (8 + 12 rows) taller than the image (17 rows); per-channel
    # sums on planes read pre-padded sources instead
    (5, 1, 6, 3, False, True, False, 17),
    (5, 1, 6, 3, True, True, False, 17),
])
def test_fused_row_strips_match_two_step(case):
    """Large outputs are processed in strips of rows; force small strips on a small problem."""
    strips = Tiling(planar=True, rows=8)     # per-channel sums on planes
    k, s, p, d, shared, normalize, with_mask, h = case
    r, rng = _random(7 + k)
    b, w, c, o = 2, 9, 3, 2
    x, guide = r(b, h, w, c), r(b, h, w, 2)
    weight = r(k, k, 1, 1) if shared else r(k, k, c, o)
    mask = jnp.asarray((rng.random((b, h, w, 1)) > 0.3).astype(np.float64)) if with_mask else None
    geom = dict(stride=s, padding=p, dilation=d)

    def two_step(x, guide, weight):
        kern, _ = ops.pac_kernel(guide, k, mask=mask, normalize=normalize, **geom)
        return ops.pac_conv2d(x, kern, weight, shared_filters=shared, impl="patches", **geom)

    def fused(x, guide, weight):
        y = ops.fused_pac_conv2d(x, guide, weight, shared_filters=shared, mask=mask,
                                 normalize=normalize, tiling=strips, **geom)
        return y[0] if with_mask else y

    def loop(x, guide, weight):
        kern, _ = ops.pac_kernel(guide, k, mask=mask, normalize=normalize, **geom)
        return ops.pac_conv2d(x, kern, weight, shared_filters=shared, impl="loop",
                              tiling=strips, **geom)

    _compare(two_step, fused, (x, guide, weight), 8, loop)


@pytest.mark.parametrize("s,d", [(1, 1), (2, 2)])
def test_planar_loop_matches_patches(s, d):
    """impl="loop" per-channel sums on planes: shared filters, channel-wise kernels, pooling."""
    planes = Tiling(planar=True)
    r, _ = _random(40 + s)
    b, h, w, c, k = 2, 11, 9, 3, 3
    x, guide = r(b, h, w, c), r(b, h, w, c)
    geom = dict(stride=s, padding=1, dilation=d)

    def ops_with(impl):
        def run(x, guide, weight):
            kern, _ = ops.pac_kernel(guide, k, **geom)
            kern_cw, _ = ops.pac_kernel(guide, k, channel_wise=True, **geom)
            conv = functools.partial(ops.pac_conv2d, shared_filters=True, impl=impl,
                                     tiling=planes, **geom)
            return (conv(x, kern, weight), conv(x, kern_cw, weight),
                    ops.pac_pool2d(x, kern_cw, kernel_size=k, impl=impl, tiling=planes,
                                   **geom))
        return run

    _compare(ops_with("patches"), ops_with("loop"), (x, guide, r(k, k, 1, 1)), seed=41)
