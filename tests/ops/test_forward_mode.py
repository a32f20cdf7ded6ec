"""Forward mode beyond ``tests/ops/test_api.py`` (which checks ``jax.jvp`` of every op and
dtype): a Hessian (forward over reverse) through the guided engine, and ``jax.jvp`` through an
NNX layer given a guide. Each case asserts the engine's ``call_hi_primitive`` is in the jaxpr
(ops.autodiff.custom_vjp); the reference is the ``patches`` path, whose forward mode is JAX's own.
"""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
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


def test_hessian_of_fused_op_matches_reference():
    x, g, w = _rand("hx", 1, 3, 4, 2), _rand("hg", 1, 3, 4, 2), _rand("hw", 3, 3, 2, 2)
    loss = lambda f: (lambda x: jnp.sum(jnp.sin(f(x, g, w))))
    assert _uses_engine(loss(_fused), x)
    np.testing.assert_allclose(jax.jit(jax.hessian(loss(_fused)))(x),
                               jax.hessian(loss(_pac("patches")))(x), rtol=1e-9, atol=1e-12)


def test_jvp_through_a_guided_layer():
    layer = nn.PacConv2d(3, 4, 3, padding=1, rngs=nnx.Rngs(0), param_dtype=_F)
    x, g = _rand("lx", 1, 9, 11, 3), _rand("lg", 1, 9, 11, 2)
    fn = lambda x: layer(x, g)
    assert _uses_engine(fn, x)
    t, eps = _rand("lt", *x.shape), 1e-6
    tan = jax.jvp(fn, (x,), (t,))[1]
    np.testing.assert_allclose(tan, (fn(x + eps * t) - fn(x - eps * t)) / (2 * eps), rtol=1e-6,
                               atol=1e-8)
