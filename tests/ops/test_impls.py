"""The ``impl`` choices of the PAC ops agree with each other (outputs and gradients, float64)
on a seeded sweep of shapes and options, and ``loop`` matches the golden vectors."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppac_jax import ops
from ppac_jax.ops import geometry as geo
from ppac_jax.ops import tap_loop
from tests import golden as G
from tests.ops.test_ops_golden import _check_case, _op_case

IMPLS = ("patches", "loop", "auto")


def _sweep(n, seed=0):
    """Random (op, kernel, stride, padding, dilation, shared, channel_wise, batch, h, w, c, o)."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        op = ("conv", "transpose", "pool")[i % 3]
        k = (int(rng.choice([1, 3, 5])), int(rng.choice([1, 3])))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 3)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        shared = bool(rng.integers(0, 2)) and op != "pool"
        cw = bool(rng.integers(0, 2)) and not (op != "pool" and False)
        cases.append((op, k, s, p, d, shared, cw, int(rng.integers(1, 3)),
                      int(rng.integers(6, 10)), int(rng.integers(6, 10)),
                      int(rng.integers(1, 4)), int(rng.integers(1, 4))))
    return cases


def _setup(case):
    op, k, s, p, d, shared, cw, b, h, w, c, o = case
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    r = lambda *shape: jnp.asarray(rng.standard_normal(shape))
    x = r(b, h, w, c)
    if op == "transpose":
        op_pad = (min(s[0], d[0]) - 1, 0)
        out = tuple(geo.transposed_output_size((h, w)[a], k[a], s[a], p[a], op_pad[a], d[a])
                    for a in range(2))
        geom = dict(stride=s, padding=p, output_padding=op_pad, dilation=d)
    else:
        out = tuple(geo.conv_output_size((h, w)[a], k[a], s[a], p[a], d[a]) for a in range(2))
        geom = dict(stride=s, padding=p, dilation=d)
    if min(out) < 1:
        return None
    kern = r(b, *out, *k, *((c,) if cw else ()))
    weight = r(*k, 1, 1) if shared else r(*k, c, o)
    return op, geom, shared, k, x, kern, weight, r


def _run(op, geom, shared, k, impl):
    def f(x, kern, weight):
        if op == "conv":
            return ops.pac_conv2d(x, kern, weight, shared_filters=shared, impl=impl, **geom)
        if op == "transpose":
            return ops.pac_conv_transpose2d(x, kern, weight, shared_filters=shared, impl=impl,
                                            **geom)
        return ops.pac_pool2d(x, kern, kernel_size=k, impl=impl, **geom)
    return f


@pytest.mark.parametrize("case", _sweep(9))
def test_impls_agree(case):
    setup = _setup(case)
    if setup is None:
        pytest.skip("empty output for this random geometry")
    op, geom, shared, k, x, kern, weight, r = setup
    args = (x, kern, weight)
    cot = r(*jax.eval_shape(_run(op, geom, shared, k, "patches"), *args).shape)

    @jax.jit
    def all_impls(args, cot):
        res = {}
        for impl in IMPLS:
            y, vjp = jax.vjp(_run(op, geom, shared, k, impl), *args)
            res[impl] = (y, vjp(cot))
        return res

    res = all_impls(args, cot)
    ref = jax.tree_util.tree_leaves(res["patches"])
    for impl in IMPLS[1:]:
        for i, (a, b) in enumerate(zip(ref, jax.tree_util.tree_leaves(res[impl]))):
            scale = float(jnp.max(jnp.abs(a))) + 1e-30
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-9,
                                       atol=1e-9 * scale, err_msg=f"{impl} leaf {i}")


def test_auto_picks_loop_for_large_problems():
    from ppac_jax.ops.pac import choose_impl
    assert choose_impl((1, 10, 10, 2), (3, 3), (8, 8)) == "patches"
    assert choose_impl((1, 518, 518, 16), (7, 7), (512, 512)) == "loop"


@pytest.mark.parametrize("stride,dilation,tap", [((1, 1), (1, 1), 4), ((2, 3), (1, 2), 7),
                                                 ((3, 2), (2, 1), 8)])
def test_phase_windows_match_tap_slice(stride, dilation, tap):
    """The loop engine's dynamic windows read the same samples as geometry.tap_slice."""
    k, out = (3, 3), (4, 5)
    a = jnp.arange(2 * 17 * 19 * 3, dtype=jnp.float32).reshape(2, 17, 19, 3)
    win = geo.Window(k, stride, (0, 0), dilation, (0, 0), False, a.shape[1:3], out)
    plan = tap_loop.Plan(win, dense=True, fused=True)
    got = tap_loop._window(geo.phase_split(a, stride), jnp.int32(tap), plan)
    want = geo.tap_slice(a, divmod(tap, k[1]), out, stride, dilation)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("name", G.params_or_skip("pacconv2d_*_f64.npz")
                         + G.params_or_skip("pacconv_transpose2d_*_f64.npz")
                         + G.params_or_skip("pacpool2d_*_f64.npz"))
def test_loop_impl_golden(name):
    g = G.Golden(name)
    fn, leaves, outputs = _op_case(g, "loop")
    _check_case(g, fn, leaves, {}, outputs)


def test_removed_shifted_impl_is_read_as_loop():
    x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 9, 9, 2)))
    kern, _ = ops.pac_kernel(x[..., :1], 3, padding=1)
    w = jnp.asarray(np.random.default_rng(4).standard_normal((3, 3, 2, 3)))
    with pytest.warns(DeprecationWarning, match='impl="shifted" was removed'):
        y = ops.pac_conv2d(x, kern, w, padding=1, impl="shifted")
    np.testing.assert_array_equal(y, ops.pac_conv2d(x, kern, w, padding=1, impl="loop"))
