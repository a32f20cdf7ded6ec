"""A custom VJP that also supports forward mode.

``jax.custom_vjp`` functions cannot be differentiated forward (``jax.jvp``, ``jax.jacfwd``,
``jax.hessian`` raise). The hand-written backward passes of the ops' loops exist only for
reverse-mode memory (they recompute every per-tap quantity instead of storing ``kh * kw``
copies), so forward mode can simply differentiate the plain forward loop: JAX carries tangents
through ``lax.fori_loop`` without storing anything per step. :func:`custom_vjp` gives both, as
one JAX "hi" primitive (``jax.experimental.hijax.VJPHiPrimitive``): reverse mode runs the given
``fwd`` / ``bwd`` exactly as ``jax.custom_vjp`` would, forward mode (``jax.jvp``,
``jax.linearize``) runs ``jax.jvp`` of the undecorated function, ``vmap`` maps the whole call,
and ``jit`` lowers the undecorated function (the same program as with ``jax.custom_vjp``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from jax.experimental.hijax import ShapedArray, VJPHiPrimitive, Zero, instantiate_zeros


def _aval(x):
    return ShapedArray(x.shape, x.dtype, weak_type=getattr(x, "weak_type", False))


class custom_vjp:  # named like the jax.custom_vjp it stands in for
    """``jax.custom_vjp`` with the last argument in ``nondiff_argnums``, whose functions also
    support ``jax.jvp`` / ``linearize`` / ``jacfwd`` / ``hessian``.

    ``fwd(*args) -> (out, residuals)`` and ``bwd(static, residuals, cotangent) -> gradients of
    the other arguments`` as for ``jax.custom_vjp``. The last argument must be hashable (it
    becomes the primitive's parameter); the others are pytrees of arrays (``None`` allowed).
    """

    def __init__(self, fun: Callable):
        self.fun = fun
        self.fwd = self.bwd = None
        functools.update_wrapper(self, fun)

    def defvjp(self, fwd: Callable, bwd: Callable) -> None:
        self.fwd, self.bwd = fwd, bwd

    def __call__(self, *args):
        *dynamic, static = args
        leaves, tree = jax.tree_util.tree_flatten(tuple(dynamic))
        avals = [jax.typeof(x) for x in leaves]
        out_aval = _out_aval(self, static, tree, tuple(avals))
        in_avals = jax.tree_util.tree_unflatten(tree, avals)
        return _Call(self, static, in_avals, out_aval)(*dynamic)


@functools.lru_cache(maxsize=256)
def _out_aval(rule: custom_vjp, static, tree, leaf_avals):
    """Output avals of ``rule.fun`` (one abstract trace per signature)."""
    dynamic = jax.tree_util.tree_unflatten(
        tree, [jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type) for a in leaf_avals])
    out = jax.eval_shape(lambda *d: rule.fun(*d, static), *dynamic)
    return jax.tree_util.tree_map(_aval, out)


class _Call(VJPHiPrimitive):
    def __init__(self, rule: custom_vjp, static, in_avals, out_aval):
        self.in_avals = in_avals
        self.out_aval = out_aval
        self.params = {"rule": rule, "static": static}
        super().__init__()

    def expand(self, *dynamic):
        return self.rule.fun(*dynamic, self.static)

    def vjp_fwd(self, nzs_in, *dynamic):
        return self.rule.fwd(*dynamic, self.static)

    def vjp_bwd_retval(self, residuals, cotangent):
        return tuple(self.rule.bwd(self.static, residuals, cotangent))

    def jvp(self, primals, tangents):
        return jax.jvp(self.expand, primals, _instantiate(tangents))

    # jax.linearize: the residuals are the inputs; the linear map re-runs the forward loop's jvp
    def lin(self, nzs_in, *dynamic):
        return self.expand(*dynamic), dynamic

    def linearized(self, residuals, *tangents):
        return jax.jvp(self.expand, residuals, _instantiate(tangents))[1]

    def batch_dim_rule(self, axis_data, in_dims):
        return jax.tree_util.tree_map(lambda _: 0, self.out_aval)


def _instantiate(tangents):
    """Symbolic zero tangents as zero arrays."""
    return jax.tree_util.tree_map(instantiate_zeros, tangents,
                                  is_leaf=lambda t: isinstance(t, Zero))
