"""Every public op of ``ppac_jax.ops`` under eager execution, ``jax.jit``, ``jax.vmap``,
``jax.grad`` and ``jax.jvp``, in float32, bfloat16 and float64, on tiny shapes (in the style of dm_pix's API
tests), and the keyword-only rule for optional arguments.

Each case calls an op the way that exercises its production path: ``impl="loop"`` for the PAC
ops with a given kernel, the fused ops (the guided engine), PAC-CRF messages (the tap-loop engine),
and ``pac_kernel``'s planar loop. The jaxpr of every traced transform is checked to contain a
engine primitive (``ops.autodiff.custom_vjp``) and a loop when the case is an engine case (so
``vmap``, ``grad`` and ``jvp`` really reach the engine), and the reference's jaxpr to contain
neither. Forward mode is checked through the reference's gradient: ``<ct, jvp(t)>`` equals
``<grad, t>``. Values and gradients are
compared to the reference (the ``patches`` path, or the op itself in float64 where there is no
second path) evaluated in float64 at the same, dtype-rounded inputs. Without a second path,
float64 gradients are also checked against a central difference. Eager execution is checked in
float32 (its dispatch does not depend on the dtype).

bfloat16 works for every op and transform here (values within 2e-2 and gradients within 5e-2
of max|ref|; ops compute half precision in float32 inside). Optional arguments that are not
keyword-only would be listed in POSITIONAL_TODAY (xfail, strict); none are.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jex_core

from ppac_jax import ops

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}
# Normwise tolerance: max |got - ref| <= TOL * max |ref| (ref in float64 at the same inputs).
TOL = {"float64": 1e-9, "float32": 1e-5, "bfloat16": 2e-2}
GRAD_TOL = {"float64": 1e-9, "float32": 1e-5, "bfloat16": 5e-2}
VMAP = 2  # size of the mapped axis
# Eager dispatch does not depend on the dtype, and every dtype would compile each primitive
# of the op again: eager runs in float32 only.
EAGER_DTYPES = ("float32",)
# The test programs are compiled without LLVM optimisation (about a third less compile time;
# these checks are about transformations and code paths, not speed).
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}

ENGINE_PRIMITIVES = ("call_hi_primitive",)  # ops.autodiff.custom_vjp
LOOP_PRIMITIVES = ("while", "scan")


@dataclasses.dataclass(frozen=True)
class Case:
    """One op call: ``fn(*arrays)`` with static options closed over.

    shapes: shapes of the array arguments (all differentiated); positive: indices of the
    arguments drawn in [0.1, 1] (kernels, confidences, scales) instead of [-1, 1];
    ref: the same result by another path (``None``: the op itself in float64);
    engine: ``fn`` must run a custom-VJP loop (checked in the jaxpr of every transform).
    """
    name: str
    fn: Callable
    shapes: tuple
    seed: int
    ref: Optional[Callable] = None
    engine: bool = False
    positive: tuple = ()


def _first(result):
    return result[0]


_T4 = ops.make_term(3, compat_type="4d")
_T_NA = ops.make_term(3, compat_type="na")
_K5 = (1, 5, 5, 3, 3)


def _kernel(guide, **kw):
    return ops.pac_kernel(guide, 3, **kw)[0]


CASES = [
    Case("pac_conv2d",
         lambda x, k, w, b: ops.pac_conv2d(x, k, w, b, stride=2, padding=1, impl="loop"),
         ((1, 5, 6, 2), (1, 3, 3, 3, 3), (3, 3, 2, 3), (3,)), seed=1, engine=True, positive=(1,),
         ref=lambda x, k, w, b: ops.pac_conv2d(x, k, w, b, stride=2, padding=1, impl="patches")),
    Case("pac_conv_transpose2d",
         lambda x, k, w, b: ops.pac_conv_transpose2d(x, k, w, b, stride=2, padding=1,
                                                     output_padding=1, impl="loop"),
         ((1, 3, 3, 2), (1, 6, 6, 3, 3), (3, 3, 2, 2), (2,)), seed=2, engine=True, positive=(1,),
         ref=lambda x, k, w, b: ops.pac_conv_transpose2d(x, k, w, b, stride=2, padding=1,
                                                         output_padding=1, impl="patches")),
    Case("pac_pool2d",
         lambda x, k: ops.pac_pool2d(x, k, kernel_size=3, padding=1, impl="loop"),
         ((1, 5, 5, 2), (1, 5, 5, 3, 3, 2)), seed=3, engine=True, positive=(1,),
         ref=lambda x, k: ops.pac_pool2d(x, k, kernel_size=3, padding=1, impl="patches")),
    Case("prob_pac_conv2d",
         lambda x, c, k, w, wn, b: ops.prob_pac_conv2d(x, c, k, w, wn, b, padding=1, impl="loop"),
         ((1, 5, 5, 2), (1, 5, 5, 1), _K5, (3, 3, 2, 2), (3, 3, 2, 2), (2,)), seed=4, engine=True,
         positive=(1, 2),
         ref=lambda x, c, k, w, wn, b: ops.prob_pac_conv2d(x, c, k, w, wn, b, padding=1,
                                                           impl="patches")),
    Case("normalized_pac_conv2d",
         lambda x, k, w, wn: ops.normalized_pac_conv2d(x, k, w, wn, padding=1,
                                                       shared_filters=True, impl="loop"),
         ((1, 5, 5, 2), _K5, (3, 3, 1, 1), (3, 3, 1, 1)), seed=5, engine=True, positive=(1,),
         ref=lambda x, k, w, wn: ops.normalized_pac_conv2d(x, k, w, wn, padding=1,
                                                           shared_filters=True, impl="patches")),
    Case("fused_pac_conv2d",
         lambda x, g, w, b: ops.fused_pac_conv2d(x, g, w, b, padding=1, normalize=True),
         ((1, 5, 6, 2), (1, 5, 6, 3), (3, 3, 2, 3), (3,)), seed=6, engine=True,
         ref=lambda x, g, w, b: ops.pac_conv2d(x, _kernel(g, padding=1, normalize=True), w, b,
                                               padding=1, impl="patches")),
    Case("fused_pac_conv_transpose2d",
         lambda x, g, w, b: ops.fused_pac_conv_transpose2d(x, g, w, b, stride=2, padding=1,
                                                           output_padding=1),
         ((1, 3, 3, 2), (1, 6, 6, 3), (3, 3, 2, 2), (2,)), seed=7, engine=True,
         ref=lambda x, g, w, b: ops.pac_conv_transpose2d(
             x, _kernel(g, stride=2, padding=1, output_padding=1, transposed=True), w, b,
             stride=2, padding=1, output_padding=1, impl="patches")),
    Case("fused_prob_pac_conv2d",
         lambda x, c, g, w, wn, b: ops.fused_prob_pac_conv2d(x, c, g, w, wn, b, padding=1),
         ((1, 5, 5, 2), (1, 5, 5, 1), (1, 5, 5, 3), (3, 3, 2, 2), (3, 3, 2, 2), (2,)), seed=8,
         engine=True, positive=(1,),
         ref=lambda x, c, g, w, wn, b: ops.prob_pac_conv2d(x, c, _kernel(g, padding=1), w, wn, b,
                                                           padding=1, impl="patches")),
    Case("fused_normalized_pac_conv2d",
         lambda x, g, w, wn, b: ops.fused_normalized_pac_conv2d(x, g, w, wn, b, padding=1),
         ((1, 5, 5, 2), (1, 5, 5, 3), (3, 3, 2, 2), (3, 3, 2, 2), (2,)), seed=23, engine=True,
         ref=lambda x, g, w, wn, b: ops.normalized_pac_conv2d(x, _kernel(g, padding=1), w, wn,
                                                              b, padding=1, impl="patches")),
    Case("pac_kernel", lambda g: _kernel(g, padding=1, normalize=True), ((1, 5, 5, 3),), seed=9),
    # 64 x 64 output pixels: the planar tap loop (smaller kernels are sliced directly).
    Case("pac_kernel_planar", lambda g: _kernel(g, padding=1), ((1, 64, 64, 2),), seed=10,
         engine=True),
    Case("crf_message",
         lambda q, k, m: ops.crf_message(q, k, _T4, ops.TermParams(m, 1.0)),
         ((1, 5, 5, 3), _K5, (3, 3, 3, 3)), seed=11, engine=True, positive=(1,),
         ref=lambda q, k, m: ops.pac_conv2d(q, k, m, padding=_T4.padding,
                                            dilation=_T4.dilation, impl="patches")),
    Case("mean_field_step",
         lambda lq, u, k, m: ops.mean_field_step(lq, u, [k], [_T4], [ops.TermParams(m, 0.5)]),
         ((1, 5, 5, 3), (1, 5, 5, 3), _K5, (3, 3, 3, 3)), seed=12, engine=True, positive=(2,)),
    Case("mean_field",
         lambda u, k, m, m2: ops.mean_field(u, [k, None], [_T4, _T_NA],
                                            [ops.TermParams(m, 0.5), ops.TermParams(m2, 0.3)],
                                            num_steps=2),
         ((1, 5, 5, 3), _K5, (3, 3, 3, 3), (3, 3, 3, 3)), seed=13, engine=True, positive=(1,)),
    Case("pac_crf",
         lambda u, f, m: ops.pac_crf(u, f, [_T4], [ops.TermParams(m, 0.5)], num_steps=2,
                                     final_output="softmax"),
         ((1, 5, 5, 3), (1, 5, 5, 2), (3, 3, 3, 3)), seed=14, engine=True),
    Case("crf_edge_kernels",
         lambda f: ops.crf_edge_kernels(f, [ops.make_term(3, blur=2)])[0], ((1, 5, 5, 3),),
         seed=15),
    Case("position_features", lambda s: ops.position_features((4, 5), scales=s), ((2,),),
         seed=16, positive=(0,)),
    Case("yxrgb_features", lambda im, s: ops.yxrgb_features(im, scales=s), ((1, 4, 5, 3), (5,)),
         seed=17, positive=(1,)),
    Case("blur_pool", lambda x: ops.blur_pool(x, 2), ((1, 5, 5, 2),), seed=18),
    Case("blur_upsample", lambda x: ops.blur_upsample(x, 2, (5, 5)), ((1, 3, 3, 2),), seed=19),
    Case("crf_output", lambda lq: ops.crf_output(lq, final_output="log_softmax"),
         ((1, 4, 4, 3),), seed=20),
    Case("resize_bilinear", lambda x: ops.resize_bilinear(x, (7, 9)), ((1, 4, 5, 2),), seed=21),
    Case("max_pool_ceil", lambda x: ops.max_pool_ceil(x), ((1, 5, 5, 2),), seed=22),
]
BY_NAME = {c.name: c for c in CASES}

# Public names that are not array ops (records and a constructor of static descriptions);
# make_term is still checked for keyword-only options below.
NOT_ARRAY_OPS = {"PairwiseTerm", "TermParams", "make_term"}

# (case, dtype) that do not work, with the reason; xfail(strict): fixed ones show.
UNSUPPORTED = {}


def test_every_public_op_has_a_case():
    assert set(ops.__all__) - NOT_ARRAY_OPS <= {c.name for c in CASES}


# --------------------------------------------------------------------------------------------
# inputs, references and compiled functions (each compiled once, shared by the tests)


def _draw(case: Case, mapped: bool):
    """float64 inputs; with ``mapped`` each has a leading ``[VMAP]`` axis."""
    rng = np.random.default_rng(case.seed + (1000 if mapped else 0))
    lead = (VMAP,) if mapped else ()
    return [rng.uniform(0.1, 1.0, lead + s) if i in case.positive
            else rng.uniform(-1.0, 1.0, lead + s) for i, s in enumerate(case.shapes)]


def _round(arrays, dtype):
    """(inputs in ``dtype``, the same values in float64)."""
    cast = [jnp.asarray(a, DTYPES[dtype]) for a in arrays]
    return cast, [np.asarray(a).astype(np.float64) for a in cast]


def _cotangent(case: Case, shape, mapped: bool):
    """A cotangent exactly representable in bfloat16 (so every dtype sees the same one)."""
    rng = np.random.default_rng(case.seed + (3000 if mapped else 2000))
    return np.asarray(jnp.asarray(rng.uniform(-1, 1, shape), jnp.bfloat16), np.float64)


def _loss(fn, ct):
    def loss(*args):
        y = fn(*args)
        y = y.astype(jnp.promote_types(y.dtype, jnp.float32))
        return jnp.sum(y * ct.astype(y.dtype))
    return loss


def _primitives(jaxpr) -> set:
    """Names of every primitive in a (closed) jaxpr, sub-jaxprs included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        if eqn.primitive.name == "call_hi_primitive":  # the engine keeps its forward function
            prim = eqn.params["_prim"]
            names |= _primitives(jax.make_jaxpr(prim.expand)(*prim.in_avals))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, (jex_core.Jaxpr, jex_core.ClosedJaxpr)):
                    names |= _primitives(sub)
    return names


def _check_path(jaxpr, engine: bool, what: str, *, grad: bool = False):
    """An engine case's jaxpr holds a loop and (outside grad / jvp) the engine primitive."""
    names = _primitives(jaxpr)
    if engine:
        assert names & set(LOOP_PRIMITIVES), f"{what}: no loop in the jaxpr: {sorted(names)}"
        if not grad:  # grad / jvp resolve the primitive into its rules' loops
            assert names & set(ENGINE_PRIMITIVES), f"{what}: no custom VJP: {sorted(names)}"


@functools.lru_cache(maxsize=None)
def _reference(name):
    """``(f, ct)``: ``f(*args) -> (value, gradients)`` of a case's float64 reference, compiled
    once for all dtypes, and the cotangent of the gradient check."""
    case = BY_NAME[name]
    ref = case.ref or case.fn
    args = [jnp.asarray(a) for a in _draw(case, False)]
    if case.ref is not None:  # the reference really is another path: no custom-VJP engine
        names = _primitives(jax.make_jaxpr(ref)(*args))
        assert not names & set(ENGINE_PRIMITIVES), sorted(names)
    ct = _cotangent(case, jax.eval_shape(ref, *args).shape, False)
    grad = jax.grad(_loss(ref, ct), tuple(range(len(args))))
    compiled = jax.jit(lambda *a: (ref(*a), grad(*a))).trace(*args).lower().compile(
        compiler_options=COMPILER_OPTIONS)
    return compiled, ct


def _assert_close(got, want, tol, what):
    got = np.asarray(jnp.asarray(got).astype(jnp.float64))
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    scale = max(float(np.max(np.abs(want))), 1e-30)
    err = float(np.max(np.abs(got - want)))
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} * {scale:.3g}"


def _params():
    for case in CASES:
        for dtype in DTYPES:
            reason = UNSUPPORTED.get((case.name, dtype))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(case.name, dtype, marks=marks, id=f"{case.name}-{dtype}")


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, dtype", list(_params()))
def test_op_under_eager_jit_vmap_grad(name, dtype):
    """One compiled program per case and dtype holds the jit, vmap and grad transforms (three
    nested jits, each jaxpr checked for the engine path); eager runs the op as is."""
    case = BY_NAME[name]
    reference, ct = _reference(name)
    args, args64 = _round(_draw(case, False), dtype)
    vargs, vargs64 = _round(_draw(case, True), dtype)
    argnums = tuple(range(len(args)))
    rng = np.random.default_rng(case.seed + 5000)
    tangents, tangents64 = _round([rng.uniform(-1, 1, s) for s in case.shapes], dtype)
    transforms = (jax.jit(case.fn), jax.jit(jax.vmap(case.fn)),
                  jax.jit(jax.grad(_loss(case.fn, ct), argnums)),
                  jax.jit(lambda a, t: jax.jvp(case.fn, a, t)[1]))
    traced = jax.jit(lambda a, va, t: (transforms[0](*a), transforms[1](*va), transforms[2](*a),
                                       transforms[3](tuple(a), tuple(t)))
                     ).trace(args, vargs, tangents)
    subs = [e.params["jaxpr"] for e in traced.jaxpr.eqns if e.primitive.name in ("jit", "pjit")]
    assert len(subs) == 4, [e.primitive.name for e in traced.jaxpr.eqns]
    for sub, what in zip(subs, ("jit", "vmap", "grad", "jvp")):
        _check_path(sub, case.engine, what, grad=what in ("grad", "jvp"))
    got_jit, got_vmap, got_grad, got_jvp = traced.lower().compile(
        compiler_options=COMPILER_OPTIONS)(args, vargs, tangents)

    want, want_grad = reference(*args64)
    if dtype in EAGER_DTYPES:
        _assert_close(case.fn(*args), want, TOL[dtype], "eager")  # the path checked under jit
    _assert_close(got_jit, want, TOL[dtype], "jit")
    want_vmap = np.stack([reference(*[a[i] for a in vargs64])[0] for i in range(VMAP)])
    _assert_close(got_vmap, want_vmap, TOL[dtype], "vmap")
    for i, (g, w) in enumerate(zip(got_grad, want_grad)):
        assert g.dtype == args[i].dtype, (i, g.dtype)
        _assert_close(g, w, GRAD_TOL[dtype], f"gradient of argument {i}")
    assert got_jvp.dtype == got_jit.dtype, got_jvp.dtype
    directional = np.sum(np.asarray(jnp.asarray(got_jvp, jnp.float64)) * ct)
    expected = sum(float(np.sum(np.asarray(g) * t)) for g, t in zip(want_grad, tangents64))
    scale = sum(float(np.sum(np.abs(np.asarray(g) * t))) for g, t in zip(want_grad, tangents64))
    assert abs(directional - expected) <= GRAD_TOL[dtype] * max(scale, 1e-30), (
        "jvp", directional, expected)
    if case.ref is None and dtype == "float64":
        _check_central_difference(case, args64, ct, want_grad)


def _check_central_difference(case, args64, ct, grads):
    """Directional derivative of the float64 loss against a central difference."""
    value = _reference(case.name)[0]
    rng = np.random.default_rng(case.seed + 4000)
    direction = [rng.uniform(-1, 1, a.shape) for a in args64]
    eps = 1e-6
    plus = value(*[a + eps * d for a, d in zip(args64, direction)])[0]
    minus = value(*[a - eps * d for a, d in zip(args64, direction)])[0]
    numeric = float(np.sum((np.asarray(plus) - np.asarray(minus)) * ct) / (2 * eps))
    analytic = sum(float(np.sum(np.asarray(g) * d)) for g, d in zip(grads, direction))
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (numeric, analytic)


# --------------------------------------------------------------------------------------------
# keyword-only options

# Optional array operands that may stay positional, like the bias of lax / PyTorch convolutions.
POSITIONAL_OPERANDS = {"bias", "unary_weight"}
# Named tuples (records of parameters): their fields are positional by construction.
RECORDS = {"PairwiseTerm", "TermParams"}


# Not keyword-only yet: (name) -> why it was left.
POSITIONAL_TODAY: dict = {}  # none left


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.xfail(strict=True, reason=POSITIONAL_TODAY[n])]
                 if n in POSITIONAL_TODAY else []) for n in sorted(set(ops.__all__) - RECORDS)])
def test_optional_arguments_are_keyword_only(name):
    signature = inspect.signature(getattr(ops, name))
    positional = [p.name for p in signature.parameters.values()
                  if p.default is not inspect.Parameter.empty
                  and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.name not in POSITIONAL_OPERANDS]
    assert not positional, f"ops.{name}: optional arguments {positional} are not keyword-only"
