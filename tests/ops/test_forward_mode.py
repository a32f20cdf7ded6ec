"""Forward mode (``jax.jvp``, ``jax.hessian``) on the loop engines (ops.autodiff.custom_vjp).

Every case runs at a size and option that takes a hand-written-backward loop (asserted: the
jaxpr holds the engine's ``call_hi_primitive``) and compares with the ``patches`` / plain
reference, whose forward mode is JAX's own. Reverse mode of the same paths is covered by the
golden and impl tests; ``tests/test_memory.py`` checks their memory.
"""

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import nn, ops

jax.config.update("jax_enable_x64", True)
_F = jnp.float64


def _rand(name, *shape):
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return jnp.asarray(rng.normal(size=shape), _F)


def _uses_engine(fn, *args):
    return "call_hi_primitive" in str(jax.make_jaxpr(fn)(*args))


def _pac(impl, shared=False):
    def f(x, g, w):
        kernel, _ = ops.pac_kernel(g, 3, padding=1)
        return ops.pac_conv2d(x, kernel, w, padding=1, shared_filters=shared, impl=impl)
    return f


def _fused(x, g, w):
    return ops.fused_pac_conv2d(x, g, w, padding=1)


def _fused_transpose(x, g, w):
    return ops.fused_pac_conv_transpose2d(x, g, w, stride=2, padding=1, output_padding=1)


def _transpose_reference(x, g, w):
    kernel, _ = ops.pac_kernel(g, 3, stride=2, padding=1, output_padding=1, transposed=True)
    return ops.pac_conv_transpose2d(x, kernel, w, stride=2, padding=1, output_padding=1,
                                    impl="patches")


def _fused_prob(x, g, w):
    c = jax.nn.sigmoid(x[..., :1])
    return ops.fused_prob_pac_conv2d(x, c, g, w, jnp.zeros((3, 3, 3, 4), _F), padding=1)


def _prob_reference(x, g, w):
    c = jax.nn.sigmoid(x[..., :1])
    kernel, _ = ops.pac_kernel(g, 3, padding=1)
    return ops.prob_pac_conv2d(x, c, kernel, w, jnp.zeros((3, 3, 3, 4), _F), padding=1,
                               impl="patches")


CASES = {
    # name: (engine function, reference function, x shape, guide shape, weight shape)
    "pac_conv2d_loop": (_pac("loop"), _pac("patches"), (1, 9, 11, 3), (1, 9, 11, 2), (3, 3, 3, 4)),
    "pac_conv2d_loop_shared": (_pac("loop", True), _pac("patches", True), (1, 9, 11, 3),
                               (1, 9, 11, 2), (3, 3, 1, 1)),
    "fused_pac_conv2d": (_fused, _pac("patches"), (1, 9, 11, 3), (1, 9, 11, 2), (3, 3, 3, 4)),
    "fused_pac_conv_transpose2d": (_fused_transpose, _transpose_reference, (1, 5, 6, 3),
                                   (1, 10, 12, 2), (3, 3, 3, 4)),
    "fused_prob_pac_conv2d": (_fused_prob, _prob_reference, (1, 9, 11, 3), (1, 9, 11, 2),
                              (3, 3, 3, 4)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_jvp_of_engine_matches_reference(name):
    fn, ref, xs, gs, ws = CASES[name]
    primals = (_rand(name + "x", *xs), _rand(name + "g", *gs), _rand(name + "w", *ws))
    tangents = tuple(_rand(name + "t" + str(i), *a.shape) for i, a in enumerate(primals))
    assert _uses_engine(fn, *primals), f"{name}: the loop engine did not run"
    assert not _uses_engine(ref, *primals)
    out, tan = jax.jit(functools.partial(jax.jvp, fn))(primals, tangents)
    out_ref, tan_ref = jax.jvp(ref, primals, tangents)
    np.testing.assert_allclose(out, out_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(tan, tan_ref, rtol=1e-9, atol=1e-12)


def test_hessian_of_fused_op_matches_reference():
    x, g, w = _rand("hx", 1, 3, 4, 2), _rand("hg", 1, 3, 4, 2), _rand("hw", 3, 3, 2, 2)
    loss = lambda f: (lambda x: jnp.sum(jnp.sin(f(x, g, w))))
    assert _uses_engine(loss(_fused), x)
    np.testing.assert_allclose(jax.jit(jax.hessian(loss(_fused)))(x),
                               jax.hessian(loss(_pac("patches")))(x), rtol=1e-9, atol=1e-12)


def test_jvp_of_planar_pac_kernel():
    # 64 x 64 output pixels: pac_kernel takes its planar loop with a hand-written backward
    g, t = _rand("kg", 1, 64, 64, 2), _rand("kt", 1, 64, 64, 2)
    fn = jax.jit(lambda g: ops.pac_kernel(g, 3, padding=1, normalize=True)[0])
    assert _uses_engine(fn, g)
    ref = jax.jvp(lambda g: ops.pac_kernel(g[:, :32], 3, padding=1, normalize=True)[0],
                  (g,), (t,))[1]
    tan = jax.jvp(fn, (g,), (t,))[1]
    # rows away from the cut agree with the small (sliced, plain-autodiff) kernel
    np.testing.assert_allclose(tan[:, :31], ref[:, :31], rtol=1e-9, atol=1e-12)


def test_jvp_of_crf_message():
    term = ops.make_term(5, compat_type="4d")
    q, k = _rand("cq", 1, 12, 13, 3), jnp.exp(_rand("ck", 1, 12, 13, 5, 5))
    params = ops.TermParams(messenger=_rand("cw", 5, 5, 3, 3), weight=1.0)
    fn = lambda q, k: ops.crf_message(q, k, term, params)
    assert _uses_engine(fn, q, k)
    ref = lambda q, k: ops.pac_conv2d(q, k, params.messenger, padding=2, impl="patches")
    tangents = (_rand("ctq", *q.shape), _rand("ctk", *k.shape))
    out, tan = jax.jvp(fn, (q, k), tangents)
    out_ref, tan_ref = jax.jvp(ref, (q, k), tangents)
    np.testing.assert_allclose(out, out_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(tan, tan_ref, rtol=1e-9, atol=1e-12)


def test_jvp_through_a_guided_layer():
    layer = nn.PacConv2d(3, 4, 3, padding=1, rngs=nnx.Rngs(0), param_dtype=_F)
    x, g = _rand("lx", 1, 9, 11, 3), _rand("lg", 1, 9, 11, 2)
    fn = lambda x: layer(x, g)
    assert _uses_engine(fn, x)
    t, eps = _rand("lt", *x.shape), 1e-6
    tan = jax.jvp(fn, (x,), (t,))[1]
    np.testing.assert_allclose(tan, (fn(x + eps * t) - fn(x - eps * t)) / (2 * eps), rtol=1e-6,
                               atol=1e-8)
