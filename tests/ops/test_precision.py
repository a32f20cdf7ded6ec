"""One float32 contraction precision (ppac_jax.ops.precision): every dot_general and
conv_general_dilated that a public op emits, forward and backward, asks for HIGHEST, and defers
to the caller's ``jax.default_matmul_precision`` when one is set.

Every public op of ``ppac_jax.ops`` is traced (``jax.make_jaxpr`` of the op and of its VJP)
with every implementation and option that changes the code path; the jaxpr is walked
recursively (pjit, custom_vjp, scan, while / fori_loop, cond, remat sub-jaxprs).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend import core as jex_core

from ppac_jax import ops
from ppac_jax.nn import layers as nn_layers

CONTRACTIONS = ("dot_general", "conv_general_dilated")
_F = jnp.float32
# ops that take no arrays (or are types): nothing to trace
NOT_TRACED = {"PairwiseTerm", "TermParams", "make_term"}
# ops with no contraction (still traced: a contraction added to them must follow the policy)
NO_CONTRACTION = {"position_features", "yxrgb_features", "crf_output", "blur_pool",
                  "blur_upsample", "crf_edge_kernels", "resize_bilinear", "max_pool_ceil"}
_HIGHEST = lax.Precision.HIGHEST


def _rand(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), _F)


def _sub_jaxprs(value):
    if isinstance(value, jex_core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex_core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def _hi_primitive_jaxpr(eqn):
    """The body of an ``ops.autodiff.custom_vjp`` call (a JAX hi primitive keeps its forward
    function, not a jaxpr, in its parameters)."""
    prim = eqn.params["_prim"]
    return jax.make_jaxpr(prim.expand)(*prim.in_avals).jaxpr


def walk(jaxpr, seen_primitives):
    """Yield every contraction equation of `jaxpr` and all its sub-jaxprs."""
    for eqn in jaxpr.eqns:
        seen_primitives.add(eqn.primitive.name)
        if eqn.primitive.name in CONTRACTIONS:
            yield eqn
        if eqn.primitive.name == "call_hi_primitive":
            yield from walk(_hi_primitive_jaxpr(eqn), seen_primitives)
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                yield from walk(sub, seen_primitives)


def _is_highest(eqn):
    """HIGHEST on both operands, or on one with DEFAULT on the other: XLA computes a
    contraction at the larger of its operands' precisions, and jax's own
    ``conv_general_dilated_patches`` (the ``patches`` impl) pairs the caller's precision with
    DEFAULT for its exact 0/1 filter."""
    return set(_precision_pair(eqn)) in ({_HIGHEST}, {_HIGHEST, lax.Precision.DEFAULT})


def _precision_pair(eqn):
    precision = eqn.params["precision"]
    if precision is None or isinstance(precision, lax.Precision):
        return (precision, precision)
    return tuple(precision)


# ----------------------------------------------------------------------------- cases

B, H, W, C, D = 1, 6, 7, 2, 3


def _positive(seed, *shape):  # stands in for an adapting kernel (no eager op to build it)
    return jnp.asarray(np.random.default_rng(seed).uniform(0.1, 1.0, size=shape), _F)


def _crf_terms():
    return [ops.make_term(3, compat_type="4d"), ops.make_term(3, compat_type="2d", blur=2),
            ops.make_term(3, compat_type="potts", spatial_filter=False),
            ops.make_term(3, compat_type="na"), ops.make_term(9, compat_type="4d")]


def _crf_params(channels=3):
    params = []
    for i, term in enumerate(_crf_terms()):
        compat = _rand(40 + i, channels, channels) if term.compat_type == "2d" else None
        params.append(ops.TermParams(_rand(30 + i, *term.messenger_shape(channels)) * 0.1,
                                     jnp.asarray(0.5, _F), compat))
    return params


def _cases():
    """name -> list of (label, fn(*arrays), arrays); fn closes over the static options."""
    x, w = _rand(1, B, H, W, C), _rand(2, 3, 3, C, 4)
    ws = _rand(3, 3, 3, 1, 1)
    guide, conf = _rand(4, B, H, W, D), _positive(5, B, H, W, 1)
    k3 = _positive(9, B, H, W, 3, 3)
    cases = {}
    cases["pac_kernel"] = [
        (label, functools.partial(lambda g, kw: ops.pac_kernel(g, 3, padding=1, **kw)[0],
                                  kw=kw), (_rand(4, B, H, 8, D) if kw.get("transposed") else guide,))
        for label, kw in [("gaussian", {}), ("normalize", dict(normalize=True)),
                          ("inv_asym", dict(kernel_type="inv", inv_alpha=0.5, inv_lambda=1.0, asym=True)),
                          ("smooth", dict(smooth_kernel=_rand(6, 3, 3) ** 2)),
                          ("channel_wise", dict(channel_wise=True)),
                          ("transposed", dict(stride=2, output_padding=1, transposed=True))]]
    cases["pac_kernel"].append(("smooth_input", lambda g, s: ops.pac_kernel(
        g, 3, padding=1, smooth_kernel=s)[0], (guide, _rand(6, 3, 3) ** 2)))
    impls = ("patches", "loop")
    cases["pac_conv2d"] = [
        (f"{impl}_{'shared' if sh else 'dense'}",
         functools.partial(lambda x, k, w, impl, sh: ops.pac_conv2d(
             x, k, w, padding=1, shared_filters=sh, impl=impl), impl=impl, sh=sh),
         (x, k3, ws if sh else w)) for impl in impls for sh in (False, True)]
    tk = _positive(9, B, 2 * H, 2 * W, 3, 3)
    cases["pac_conv_transpose2d"] = [
        (impl, functools.partial(lambda x, k, w, impl: ops.pac_conv_transpose2d(
            x, k, w, stride=2, padding=1, output_padding=1, impl=impl), impl=impl), (x, tk, w))
        for impl in impls]
    cases["pac_pool2d"] = [
        (impl, functools.partial(lambda x, k, impl: ops.pac_pool2d(
            x, k, kernel_size=3, padding=1, impl=impl), impl=impl), (x, k3)) for impl in impls]
    cases["prob_pac_conv2d"] = [
        (f"{impl}_{sh}", functools.partial(lambda x, c, k, w, wn, impl, sh: ops.prob_pac_conv2d(
            x, c, k, w, wn, padding=1, shared_filters=sh, impl=impl), impl=impl, sh=sh),
         (x, conf, k3, ws if sh else w, _rand(7, 3, 3, 1, 1) if sh else _rand(7, 3, 3, C, 4)))
        for impl in impls for sh in (False, True)]
    cases["normalized_pac_conv2d"] = [
        (impl, functools.partial(lambda x, k, w, wn, impl: ops.normalized_pac_conv2d(
            x, k, w, wn, padding=1, impl=impl), impl=impl), (x, k3, w, _rand(7, 3, 3, C, 4)))
        for impl in impls]
    fused_opts = [("plain", {}), ("normalize", dict(normalize=True)),
                  ("shared_inv", dict(shared_filters=True, kernel_type="inv", inv_alpha=0.5,
                                          inv_lambda=1.0)),
                  ("smooth", dict(smooth_kernel=_rand(6, 3, 3) ** 2))]
    cases["fused_pac_conv2d"] = [
        (label, functools.partial(lambda x, g, w, kw: ops.fused_pac_conv2d(
            x, g, w, padding=1, **kw), kw=kw), (x, guide, ws if kw.get("shared_filters") else w))
        for label, kw in fused_opts]
    big_guide = _rand(8, B, 2 * H, 2 * W, D)
    cases["fused_pac_conv_transpose2d"] = [
        (label, functools.partial(lambda x, g, w, kw: ops.fused_pac_conv_transpose2d(
            x, g, w, stride=2, padding=1, output_padding=1, **kw), kw=kw),
         (x, big_guide, ws if kw.get("shared_filters") else w)) for label, kw in fused_opts]
    cases["fused_prob_pac_conv2d"] = [
        (f"shared_{sh}", functools.partial(lambda x, c, g, w, wn, sh: ops.fused_prob_pac_conv2d(
            x, c, g, w, wn, padding=1, shared_filters=sh), sh=sh),
         (x, conf, guide, ws if sh else w, _rand(7, 3, 3, 1, 1) if sh else _rand(7, 3, 3, C, 4)))
        for sh in (False, True)]
    cases["fused_normalized_pac_conv2d"] = [
        (f"shared_{sh}", functools.partial(lambda x, g, w, wn, sh: ops.fused_normalized_pac_conv2d(
            x, g, w, wn, padding=1, shared_filters=sh), sh=sh),
         (x, guide, ws if sh else w, _rand(7, 3, 3, 1, 1) if sh else _rand(7, 3, 3, C, 4)))
        for sh in (False, True)]
    cases["fused_pac_conv2d"].append(("channel_wise", lambda x, g, w: ops.fused_pac_conv2d(
        x, g, w, padding=1, shared_filters=True, channel_wise=True), (x, _rand(4, B, H, W, C), ws)))

    terms, params = _crf_terms(), _crf_params()
    q, image = _positive(10, B, 8, 9, 3), _rand(11, B, 8, 9, 3)
    feats = _rand(12, B, 8, 9, 5)
    kernels = [None if not t.has_edge_kernel else
               _positive(13, B, -(-8 // t.blur), -(-9 // t.blur), t.kernel_size, t.kernel_size)
               for t in terms]
    cases["position_features"] = [("", lambda s: ops.position_features((8, 9), scales=s), (jnp.ones(2, _F),))]
    cases["yxrgb_features"] = [("", lambda im: ops.yxrgb_features(im, yx_scale=8.0, rgb_scale=0.5), (image,))]
    cases["blur_pool"] = [("", lambda v: ops.blur_pool(v, 2), (q,))]
    cases["blur_upsample"] = [("", lambda v: ops.blur_upsample(v, 2, (8, 9)), (q[:, :4, :5],))]
    cases["crf_edge_kernels"] = [("", lambda f: ops.crf_edge_kernels(f, terms), (feats,))]
    cases["crf_message"] = [
        (term.compat_type + str(term.kernel_size), functools.partial(
            lambda v, k, p, term: ops.crf_message(v, k, term, p), term=term),
         (q, kernel, param)) for term, kernel, param in zip(terms, kernels, params)]
    cases["mean_field_step"] = [("", lambda lq, u, ks, ps: ops.mean_field_step(lq, u, ks, terms, ps),
                                 (jnp.log(q), q, kernels, params))]
    cases["mean_field"] = [("scan", lambda u, ks, ps: ops.mean_field(u, ks, terms, ps, num_steps=2),
                            (jnp.log(q), kernels, params))]
    cases["crf_output"] = [("", lambda lq: ops.crf_output(lq, final_output="softmax"), (jnp.log(q),))]
    cases["pac_crf"] = [("", lambda u, f, ps: ops.pac_crf(u, f, terms, ps, num_steps=2),
                         (jnp.log(q), feats, params))]
    cases["resize_bilinear"] = [("", lambda v: ops.resize_bilinear(v, (13, 7)), (q,))]
    cases["max_pool_ceil"] = [("", lambda v: ops.max_pool_ceil(v, window=2, stride=2), (q,))]
    return cases


@functools.cache
def _all_cases():
    return _cases()


def _trace(fn, arrays):
    def forward_and_backward(*args):
        out, vjp = jax.vjp(fn, *args)
        return out, vjp(jax.tree.map(jnp.ones_like, out))
    return jax.make_jaxpr(forward_and_backward)(*arrays).jaxpr


def _ids():
    names = [n for n in ops.__all__ if n not in NOT_TRACED]
    return names


def test_every_public_op_has_a_case():
    assert set(_all_cases()) == set(ops.__all__) - NOT_TRACED


@pytest.mark.parametrize("name", _ids())
def test_contractions_of_public_ops_are_highest(name):
    counted = 0
    for label, fn, arrays in _all_cases()[name]:
        seen = set()
        eqns = list(walk(_trace(fn, arrays), seen))
        bad = [(e.primitive.name, _precision_pair(e)) for e in eqns if not _is_highest(e)]
        assert not bad, f"{name}[{label}]: contractions below HIGHEST: {bad}"
        counted += len(eqns)
    if name not in NO_CONTRACTION:
        assert counted > 0, f"{name}: no contraction found, the walker sees nothing"


def test_walker_reaches_nested_jaxprs():
    # the tap loop's contractions live in custom_vjp / while bodies, the CRF's in a scan
    for name, label in (("pac_conv2d", "loop_dense"), ("mean_field", "scan")):
        (case,) = [c for c in _all_cases()[name] if c[0] == label]
        seen = set()
        top = [e for e in _trace(case[1], case[2]).eqns if e.primitive.name in CONTRACTIONS]
        nested = list(walk(_trace(case[1], case[2]), seen))
        assert len(nested) > len(top), (name, seen)
        assert seen & {"while", "scan", "call_hi_primitive", "pjit"}


def test_caller_setting_of_default_matmul_precision_applies():
    _, fn, arrays = _all_cases()["fused_pac_conv2d"][0]
    with jax.default_matmul_precision("tensorfloat32"):
        eqns = list(walk(_trace(fn, arrays), set()))
    assert eqns and not any(_HIGHEST in _precision_pair(e) for e in eqns)


def test_nn_conv2d_follows_the_policy():
    from flax import nnx
    layer = nn_layers.Conv2d(C, 4, 3, padding=1, rngs=nnx.Rngs(0))
    x = _rand(1, B, H, W, C)
    eqns = list(walk(jax.make_jaxpr(lambda v: layer(v))(x).jaxpr, set()))
    assert eqns and all(_is_highest(e) for e in eqns)


_CONTRACTING_CALLS = {"einsum", "dot", "matmul", "tensordot", "inner", "vdot", "dot_general",
                      "conv", "conv_general_dilated", "conv_general_dilated_patches",
                      "conv_transpose", "conv_with_general_padding", "Conv", "ConvTranspose",
                      "Linear", "LinearGeneral", "Einsum"}
# data/ depends on nothing of ours (its baseline flow estimator is not a library op)
_POLICY_DIRS = ("ops", "nn", "losses", "train")


def _contractions_without_precision(path):
    import ast
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            found.append((node.lineno, "@"))
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            if name in _CONTRACTING_CALLS and "precision" not in {k.arg for k in node.keywords}:
                found.append((node.lineno, name))
    return found


def test_every_contraction_in_the_sources_passes_a_precision():
    """Source guard for code the jaxpr test cannot reach (layers added later, losses, train)."""
    import pathlib
    package = pathlib.Path(ops.__file__).resolve().parents[1]
    files = [p for d in _POLICY_DIRS for p in (package / d).rglob("*.py")]
    files.append(package / "metrics.py")
    bad = [f"{p.relative_to(package)}:{line}: {name}" for p in files
           for line, name in _contractions_without_precision(p)]
    assert not bad, "contractions without precision=matmul_precision():\n" + "\n".join(bad)
