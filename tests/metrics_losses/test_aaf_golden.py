"""AAF losses and the minimax optimiser against the original TensorFlow code (golden/aaf_*).

Tolerances (golden/README section 8.4): float64 outputs and gradients to 1e-12 relative to each
array's maximum; float32 outputs 1e-5, gradients 1e-4 relative to the maximum; masks, counts and
labels exact; NaN cases: the NaN pattern, then ``meta['port_values']``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppac_jax import losses
from ppac_jax.train import aaf_optimizer
from tests.golden import Golden, params_or_skip


def _tol(name: str, kind: str) -> float:
    if name.endswith("_f64.npz"):
        return 1e-12
    return 1e-5 if kind == "out" else 1e-4


def close_to_max(actual, expected, rtol, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected))), np.finfo(np.float64).tiny)
    err = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    assert err <= rtol * scale, f"{what}: max error {err:.3e} > {rtol:.0e} * max {scale:.3e}"


def _table(a):
    """The original's ``[1, 1, 1, C, 1, 3]`` variables -> ``[C, 3]``."""
    return np.asarray(a).reshape(a.shape[3], a.shape[5])


# ------------------------------------------------------------------------------------------
# layers helpers
# ------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("num_classes",))
def _layers(labels, x, *, num_classes):
    onehot = jax.nn.one_hot(labels, num_classes, dtype=x.dtype)
    out = {}
    for s in (1, 2, 3):
        out[f"out_ignore_s{s}"] = losses.ignores_from_label(labels, num_classes, s)
        out[f"out_edge_s{s}"] = losses.edges_from_label(onehot, s)
    out["out_eightcorner_s2"] = losses.eightcorner_activation(x, 2)
    out["out_eightway"] = losses.eightway_activation(x)
    return out


@pytest.mark.parametrize("name", params_or_skip("aaf_layers_*.npz"))
def test_layers_helpers(name):
    g = Golden(name)
    out = _layers(g["in_labels"], g["in_x"], num_classes=g.meta["num_classes"])
    for key, value in out.items():
        np.testing.assert_array_equal(value, g[key], err_msg=key)


# ------------------------------------------------------------------------------------------
# affinity_loss / adaptive_affinity_loss (per-element terms)
# ------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("num_classes", "size"))
def _terms_vjp(labels, probs, w_e, w_n, cot_e, cot_n, *, num_classes, size, margin):
    """Terms and the gradient of ``sum(edge * cot_e) + sum(not_edge * cot_n)``."""
    def f(probs, w_e, w_n):
        t = losses.affinity_terms(labels, probs, num_classes=num_classes, size=size,
                                  margin=margin, edge_weight=w_e, not_edge_weight=w_n)
        return jnp.sum(t.edge * cot_e) + jnp.sum(t.not_edge * cot_n), t
    (_, t), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(probs, w_e, w_n)
    return t, grads


@functools.partial(jax.jit, static_argnames=("num_classes", "size"))
def _terms_vjp_unweighted(labels, probs, cot_e, cot_n, *, num_classes, size, margin):
    def f(probs):
        t = losses.affinity_terms(labels, probs, num_classes=num_classes, size=size,
                                  margin=margin)
        return jnp.sum(t.edge * cot_e) + jnp.sum(t.not_edge * cot_n), t
    (_, t), grad = jax.value_and_grad(f, has_aux=True)(probs)
    return t, grad


def _dense_cot(mask, cot):
    g = np.zeros(mask.shape, cot.dtype)
    g[mask] = cot[:, 0]
    return g


def _check_terms(g, t):
    np.testing.assert_array_equal(t.edge_mask, g["aux_edge_mask"])
    np.testing.assert_array_equal(t.not_edge_mask, g["aux_not_edge_mask"])
    assert int(t.edge_count) == g["out_edge_loss"].shape[0]
    assert int(t.not_edge_count) == g["out_not_edge_loss"].shape[0]
    assert t.edge.dtype == g["in_probs"].dtype
    rtol = _tol(g.name, "out")
    close_to_max(np.asarray(t.edge)[g["aux_edge_mask"]], g["out_edge_loss"][:, 0], rtol, "edge")
    close_to_max(np.asarray(t.not_edge)[g["aux_not_edge_mask"]], g["out_not_edge_loss"][:, 0],
                 rtol, "not_edge")


@pytest.mark.parametrize("name", params_or_skip("aaf_affinity_N*.npz")
                         + params_or_skip("aaf_affinity_saturated_*.npz"))
def test_affinity_loss(name):
    g = Golden(name)
    cot_e = _dense_cot(g["aux_edge_mask"], g["cot_edge_loss"])
    cot_n = _dense_cot(g["aux_not_edge_mask"], g["cot_not_edge_loss"])
    t, grad = _terms_vjp_unweighted(g["in_labels"], g["in_probs"], cot_e, cot_n,
                                    num_classes=g.meta["num_classes"], size=1,
                                    margin=g.meta["kld_margin"])
    _check_terms(g, t)
    close_to_max(grad, g["grad_in_probs"], _tol(name, "grad"), "grad probs")


@pytest.mark.parametrize("name", params_or_skip("aaf_adaptive_*.npz"))
def test_adaptive_affinity_loss(name):
    g = Golden(name)
    c = g.meta["num_classes"]
    cot_e = _dense_cot(g["aux_edge_mask"], g["cot_edge_loss"])
    cot_n = _dense_cot(g["aux_not_edge_mask"], g["cot_not_edge_loss"])
    t, (gp, gwe, gwn) = _terms_vjp(g["in_labels"], g["in_probs"], g["in_w_edge"].reshape(c),
                                   g["in_w_not_edge"].reshape(c), cot_e, cot_n, num_classes=c,
                                   size=g.meta["size"], margin=g.meta["kld_margin"])
    _check_terms(g, t)
    rtol = _tol(name, "grad")
    close_to_max(gp, g["grad_in_probs"], rtol, "grad probs")
    close_to_max(gwe, g["grad_in_w_edge"].reshape(c), rtol, "grad w_edge")
    close_to_max(gwn, g["grad_in_w_not_edge"].reshape(c), rtol, "grad w_not_edge")


def test_saturated_file_pins_the_clip_tie_rule():
    """The saturated case holds probabilities exactly at the clip bounds (1e-4 and 1): a rule
    other than TF's full gradient on ties would miss its gradient by far more than 1e-12."""
    g = Golden("aaf_affinity_saturated_N2_C3_13x16_m3_f64.npz")
    p = g["in_probs"]
    assert np.any(p == 1.0) and np.any(p == 1e-4)

    def clip_half_split(p):
        return jnp.clip(p, 1e-4, 1.0)

    cot_e = _dense_cot(g["aux_edge_mask"], g["cot_edge_loss"])
    cot_n = _dense_cot(g["aux_not_edge_mask"], g["cot_not_edge_loss"])
    # jnp.clip splits the gradient 0.5/0.5 at the bounds: the rule our where-clip avoids.
    assert float(jax.grad(lambda v: clip_half_split(v))(1.0)) == 0.5
    _, grad = _terms_vjp_unweighted(g["in_labels"], p, cot_e, cot_n, num_classes=3, size=1,
                                    margin=3.0)
    close_to_max(grad, g["grad_in_probs"], 1e-12, "grad probs")


# ------------------------------------------------------------------------------------------
# training compositions
# ------------------------------------------------------------------------------------------

_TRAIN_STATIC = ("num_classes", "num_steps", "margin", "lambda_edge", "lambda_not_edge")


@functools.partial(jax.jit, static_argnames=_TRAIN_STATIC)
def _affinity_train_vjp(logits, labels, cot_seg, cot_aff, step, **kw):
    def f(logits):
        t = losses.affinity_training_terms(logits, labels, step=step, **kw)
        return t.seg * cot_seg + t.affinity * cot_aff, t
    (_, t), grad = jax.value_and_grad(f, has_aux=True)(logits)
    return t, grad


@functools.partial(jax.jit, static_argnames=_TRAIN_STATIC)
def _aaf_train_vjp(logits, labels, edge_w, nonedge_w, cot_seg, cot_aaf, step, **kw):
    def f(logits, edge_w, nonedge_w):
        t = losses.aaf_training_terms(logits, labels, edge_w, nonedge_w, step=step, **kw)
        return t.seg * cot_seg + t.affinity * cot_aaf, t
    (_, t), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(logits, edge_w,
                                                                            nonedge_w)
    return t, grads


def _train_kwargs(meta):
    return dict(num_classes=meta["num_classes"], margin=meta["kld_margin"],
                lambda_edge=meta["kld_lambda_1"], lambda_not_edge=meta["kld_lambda_2"],
                num_steps=meta["num_steps"])


def _check_scalar_or_port(actual, g, key, port_key):
    """A NaN of the original must be the port value (empty mean = 0) here."""
    expected = g[key]
    rtol = _tol(g.name, "out")
    if np.isnan(expected):
        assert np.isfinite(actual)
        if port_key is not None:
            close_to_max(actual, g.meta["port_values"][port_key], rtol, key + " (port value)")
        return
    close_to_max(actual, expected, rtol, key)


@pytest.mark.parametrize("name", params_or_skip("aaf_affinity_train_*.npz"))
def test_affinity_training_loss(name):
    g = Golden(name)
    t, grad = _affinity_train_vjp(g["in_logits"], g["in_labels"], g["cot_seg_loss"],
                                         g["cot_aff_loss"], g.meta["step"], **_train_kwargs(g.meta))
    np.testing.assert_array_equal(t.labels, g["aux_labels_shrunk"][..., 0])
    assert int(t.edge_counts[0]) == int(g["aux_n_edge"])
    assert int(t.not_edge_counts[0]) == int(g["aux_n_not_edge"])
    _check_scalar_or_port(t.seg, g, "out_seg_loss", "seg_loss")
    _check_scalar_or_port(t.affinity, g, "out_aff_loss", "aff_loss")
    _check_scalar_or_port(t.dec, g, "aux_dec", None)
    _check_scalar_or_port(t.not_edge_means[0], g, "aux_not_edge_mean", None)
    if np.isnan(g["aux_edge_mean"]):
        assert float(t.edge_means[0]) == 0.0 and int(t.edge_counts[0]) == 0
    else:
        _check_scalar_or_port(t.edge_means[0], g, "aux_edge_mean", None)
    close_to_max(t.total, t.seg + t.affinity, 1e-15, "total")
    assert np.all(np.isfinite(grad))
    close_to_max(grad, g["grad_in_logits"], _tol(name, "grad"), "grad logits")


@pytest.mark.parametrize("name", params_or_skip("aaf_train_N*.npz")
                         + params_or_skip("aaf_train_small_nan_*.npz"))
def test_aaf_training_loss(name):
    g = Golden(name)
    edge_w, nonedge_w = _table(g["param_edge_w"]), _table(g["param_nonedge_w"])
    t, (gl, ge, gn) = _aaf_train_vjp(g["in_logits"], g["in_labels"], edge_w, nonedge_w,
                                            g["cot_seg_loss"], g["cot_aaf_loss"], g.meta["step"],
                                            **_train_kwargs(g.meta))
    np.testing.assert_array_equal(t.labels, g["aux_labels_shrunk"][..., 0])
    _check_scalar_or_port(t.seg, g, "out_seg_loss", "seg_loss")
    _check_scalar_or_port(t.affinity, g, "out_aaf_loss", "aaf_loss")
    _check_scalar_or_port(t.dec, g, "aux_dec", None)
    for i, s in enumerate((1, 2, 3)):
        assert int(t.edge_counts[i]) == int(g[f"aux_n_edge_s{s}"])
        assert int(t.not_edge_counts[i]) == int(g[f"aux_n_not_edge_s{s}"])
        for mine, key, count in ((t.edge_means[i], f"aux_edge_mean_s{s}", t.edge_counts[i]),
                                 (t.not_edge_means[i], f"aux_not_edge_mean_s{s}",
                                  t.not_edge_counts[i])):
            if np.isnan(g[key]):
                assert float(mine) == 0.0 and int(count) == 0
            else:
                _check_scalar_or_port(mine, g, key, None)
    close_to_max(t.total, t.seg + t.affinity, 1e-15, "total")
    rtol = _tol(name, "grad")
    for mine, key in ((gl, "grad_in_logits"), (ge, "grad_param_edge_w"),
                      (gn, "grad_param_nonedge_w")):
        assert np.all(np.isfinite(mine))
        expected = g[key]
        close_to_max(mine, expected if expected.ndim == 4 else _table(expected), rtol, key)


# ------------------------------------------------------------------------------------------
# the minimax optimiser: two momentum steps of train_aaf.py
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", params_or_skip("aaf_train_step_*.npz"))
def test_aaf_train_steps(name):
    g = Golden(name)
    m = g.meta
    kw = _train_kwargs(m)
    params = {"logits": jnp.asarray(g["param_logits"]),
              "edge_w": jnp.asarray(_table(g["param_edge_w"])),
              "nonedge_w": jnp.asarray(_table(g["param_nonedge_w"]))}
    labels_tree = {"logits": "network", "edge_w": "aaf", "nonedge_w": "aaf"}
    tx = aaf_optimizer(labels_tree, base_lr=m["base_lr"], num_steps=m["num_steps"],
                       momentum=m["momentum"], power=m["power"], step_offset=m["steps"][0])
    state = tx.init(params)

    @jax.jit
    def step(params, state, t):
        def loss(p):
            terms = losses.aaf_training_terms(p["logits"], g["in_labels"], p["edge_w"],
                                              p["nonedge_w"], step=t, **kw)
            return terms.total, terms
        (value, terms), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value, terms

    rtol_out = _tol(name, "out")
    for i, t in enumerate(m["steps"]):
        params, state, value, terms = step(params, state, t)
        close_to_max(value, g[f"out_loss_step{i}"], rtol_out, f"loss step {i}")
        close_to_max(terms.seg, g[f"aux_seg_loss_step{i}"], rtol_out, f"seg step {i}")
        close_to_max(terms.affinity, g[f"aux_aaf_loss_step{i}"], rtol_out, f"aaf step {i}")
        close_to_max(terms.dec, g[f"aux_dec_step{i}"], rtol_out, f"dec step {i}")
        for key, golden_key in (("logits", "logits"), ("edge_w", "edge_w"),
                                ("nonedge_w", "nonedge_w")):
            expected = g[f"out_{golden_key}_after_step{i}"]
            expected = expected if expected.ndim == 4 else _table(expected)
            assert params[key].dtype == expected.dtype
            close_to_max(params[key], expected, rtol_out, f"{key} after step {i}")
