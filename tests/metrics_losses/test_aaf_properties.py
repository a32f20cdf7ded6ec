"""Properties of the AAF losses and optimiser beyond the golden files: a NumPy gather
reference for other sizes and shapes, no NaN/inf for any input, void pixels really ignored,
TF's tie rules, jit = eager = vmap, the ascent direction and input validation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ppac_jax import losses
from ppac_jax.losses.aaf import _clip_ties_pass
from ppac_jax.train import aaf_optimizer, init_aaf_tables, poly_learning_rate

KW = dict(margin=3.0, lambda_edge=1.0, lambda_not_edge=1.0, num_steps=1000)


def _reference_terms(labels, probs, c, s, m, w_e=None, w_n=None):
    """SPEC_aaf sections 2-4 by explicit per-offset indexing (NumPy, float64)."""
    n, h, w = labels.shape
    valid_px = (labels >= 0) & (labels < c)
    offsets = [(dy, dx) for dy in (-s, 0, s) for dx in (-s, 0, s) if (dy, dx) != (0, 0)]
    edge = np.zeros((n, h, w, c, 8))
    edge_m = np.zeros((n, h, w, c, 8), bool)
    ne = np.zeros((n, h, w, c, 8))
    ne_m = np.zeros((n, h, w, c, 8), bool)
    for b in range(n):
        for y in range(h):
            for x in range(w):
                for k, (dy, dx) in enumerate(offsets):
                    pts = [(y, x), (y + dy, x + dx), (y - dy, x - dx)]
                    if not all(0 <= py < h and 0 <= px < w and valid_px[b, py, px]
                               for py, px in pts):
                        continue
                    yj, xj = y + dy, x + dx
                    for ch in range(c):
                        pi, pj = probs[b, y, x, ch], probs[b, yj, xj, ch]
                        P_i, P_j = np.clip(pi, 1e-4, 1), np.clip(pj, 1e-4, 1)
                        Q_i, Q_j = np.clip(1 - pi, 1e-4, 1), np.clip(1 - pj, 1e-4, 1)
                        kl = P_j * np.log(P_j / P_i) + Q_j * np.log(Q_j / Q_i)
                        centre = labels[b, y, x]
                        if (labels[b, yj, xj] == ch) != (centre == ch):
                            edge_m[b, y, x, ch, k] = True
                            edge[b, y, x, ch, k] = max(0.0, m - kl) * (
                                1 if w_e is None else w_e[centre])
                        else:
                            ne_m[b, y, x, ch, k] = True
                            ne[b, y, x, ch, k] = kl * (1 if w_n is None else w_n[centre])
    return edge, edge_m, ne, ne_m


def _random_case(rng, n, h, w, c, void_frac=0.2, void_value=255):
    labels = rng.integers(0, c, (n, h, w))
    # blocky labels so that both edges and non-edges occur at every size
    labels = np.repeat(np.repeat(labels[:, ::2, ::2], 2, 1), 2, 2)[:, :h, :w]
    labels = np.where(rng.random((n, h, w)) < void_frac, void_value, labels)
    logits = rng.normal(size=(n, h, w, c)) * 2
    return labels, np.asarray(jax.nn.softmax(logits, -1))


@functools.partial(jax.jit, static_argnames=("num_classes", "size"))
def _terms(labels, probs, w_e, w_n, *, num_classes, size):
    return losses.affinity_terms(labels, probs, num_classes=num_classes, size=size, margin=2.5,
                                 edge_weight=w_e, not_edge_weight=w_n)


@pytest.mark.parametrize("size,shape,void", [(2, (1, 7, 9), -1), (4, (2, 11, 10), 7)])
def test_terms_match_a_gather_reference(size, shape, void):
    """Held-out style cases: other sizes, odd shapes, negative or small void labels."""
    rng = np.random.default_rng(size)
    c = 4
    labels, probs = _random_case(rng, *shape, c, void_value=void)
    w_e, w_n = rng.random(c), rng.random(c)
    t = _terms(labels, probs, w_e, w_n, num_classes=c, size=size)
    e, em, ne, nem = _reference_terms(labels, probs, c, size, 2.5, w_e, w_n)
    assert em.any() and nem.any()
    np.testing.assert_array_equal(t.edge_mask, em)
    np.testing.assert_array_equal(t.not_edge_mask, nem)
    np.testing.assert_allclose(t.edge, e, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(t.not_edge, ne, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(t.edge_mean, e[em].mean(), rtol=1e-13)
    np.testing.assert_allclose(t.not_edge_mean, ne[nem].mean(), rtol=1e-13)


# ------------------------------------------------------------------------------------------
# finiteness and voids
# ------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("num_classes",))
def _aaf_value_grads(logits, labels, edge_w, nonedge_w, *, num_classes):
    def f(logits, edge_w, nonedge_w):
        t = losses.aaf_training_terms(logits, labels, edge_w, nonedge_w,
                                      num_classes=num_classes, step=3, **KW)
        return t.total, t
    (value, terms), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(
        logits, edge_w, nonedge_w)
    return value, grads, terms


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _aff_value_grad(logits, labels, *, num_classes):
    f = functools.partial(losses.affinity_training_loss, num_classes=num_classes, step=3, **KW)
    return jax.value_and_grad(f)(logits, labels)


def _finite(tree):
    return all(bool(np.all(np.isfinite(np.asarray(a)))) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("crop", [(40, 48), (8, 8)])
def test_no_nan_small_maps_all_void_and_single_class(crop):
    """Label maps smaller than the 7x7 field, all-void and single-class batches, saturated
    logits: every value and gradient is finite; empty sets contribute exactly 0."""
    rng = np.random.default_rng(0)
    c = 3
    h, w = -(-crop[0] // 8), -(-crop[1] // 8)
    tables = (rng.normal(size=(c, 3)), rng.normal(size=(c, 3)))
    cases = {
        "random": rng.integers(0, c, (2,) + crop),
        "void": np.full((2,) + crop, 255),
        "single": np.where(rng.random((2,) + crop) < 0.3, 255, 1),
    }
    for scale in (1.0, 1e4):
        logits = rng.normal(size=(2, h, w, c)) * scale
        for name, labels in cases.items():
            labels = labels.astype(np.uint8)
            value, grads, terms = _aaf_value_grads(logits, labels, *tables, num_classes=c)
            aff_value, aff_grad = _aff_value_grad(logits, labels, num_classes=c)
            assert _finite((value, grads, terms, aff_value, aff_grad)), (crop, name, scale)
            if name == "void":
                assert float(value) == 0.0 and float(aff_value) == 0.0
                assert not np.any(np.asarray(grads[0])) and not np.any(np.asarray(aff_grad))
            # maps of at most 6x6 have no valid size-3 pair at all
            if h <= 6 and w <= 6:
                assert int(terms.edge_counts[2]) == 0 and int(terms.not_edge_counts[2]) == 0
                assert float(terms.edge_means[2]) == 0.0


def test_nonfinite_values_under_void_change_nothing():
    rng = np.random.default_rng(1)
    c = 3  # the shapes of test_no_nan...[crop0]: the compiled functions are shared
    labels = rng.integers(0, c, (2, 40, 48)).astype(np.uint8)
    labels[:, 8:24, 16:32] = 255
    labels[1, :, :8] = 255
    logits = rng.normal(size=(2, 5, 6, c))
    tables = (rng.normal(size=(c, 3)), rng.normal(size=(c, 3)))
    small = np.asarray(losses.shrink_labels(labels, (5, 6)))
    void = small >= c
    assert void.any() and (~void).any()
    base_v, base_g, _ = _aaf_value_grads(logits, labels, *tables, num_classes=c)
    base_av, base_ag = _aff_value_grad(logits, labels, num_classes=c)
    for bad in (np.nan, np.inf, -np.inf):
        planted = logits.copy()
        planted[void] = bad
        v, g, _ = _aaf_value_grads(planted, labels, *tables, num_classes=c)
        av, ag = _aff_value_grad(planted, labels, num_classes=c)
        assert float(v) == float(base_v) and float(av) == float(base_av)
        for a, b in zip(jax.tree.leaves((g, ag)), jax.tree.leaves((base_g, base_ag))):
            np.testing.assert_array_equal(a, b)
    # the same for probabilities fed to affinity_terms directly
    probs = np.asarray(jax.nn.softmax(logits, -1))
    f = jax.jit(jax.value_and_grad(lambda p: losses.affinity_terms(
        small, p, num_classes=c, size=2, margin=3.0).edge_mean
        + losses.affinity_terms(small, p, num_classes=c, size=2, margin=3.0).not_edge_mean))
    v0, g0 = f(probs)
    planted = probs.copy()
    planted[void] = np.nan
    v1, g1 = f(planted)
    assert float(v0) == float(v1) and np.isfinite(float(v1))
    np.testing.assert_array_equal(g0, g1)
    assert not np.any(np.asarray(g1)[void])


# ------------------------------------------------------------------------------------------
# tie rules of TF's gradients
# ------------------------------------------------------------------------------------------

def test_clip_passes_the_full_gradient_on_ties_and_none_outside():
    grad = jax.grad(lambda v: _clip_ties_pass(v, 1e-4, 1.0))
    assert [float(grad(v)) for v in (1e-4, 1.0, 0.5)] == [1.0, 1.0, 1.0]
    assert [float(grad(v)) for v in (5e-5, 0.0, 1.5)] == [0.0, 0.0, 0.0]
    grad32 = jax.grad(lambda v: _clip_ties_pass(v, jnp.float32(1e-4), jnp.float32(1.0)))
    assert float(grad32(jnp.float32(1e-4))) == 1.0 and float(grad32(jnp.float32(1.0))) == 1.0


def test_hinge_passes_no_gradient_at_the_kink():
    """Put the margin exactly on one edge element's divergence: that element passes no
    gradient (TF's max(0, .) at a tie), a margin slightly above it does."""
    probs = np.array([[[[0.2, 0.8], [0.7, 0.3], [0.2, 0.8]]]])
    same = np.zeros((1, 1, 3), np.int32)  # all pairs non-edges: not_edge holds the KL values
    kl = float(losses.affinity_terms(same, probs, num_classes=2, size=1, margin=3.0)
               .not_edge[0, 0, 1, 0, 3])
    assert kl > 0.1
    labels = np.array([[[0, 1, 0]]])  # channel 0 of the centre's pairs are edges

    def edge_sum(p, margin):
        t = losses.affinity_terms(labels, p, num_classes=2, size=1, margin=margin)
        return jnp.sum(t.edge[..., 0, :])  # channel 0 only depends on probs[..., 0]

    at_kink = np.asarray(jax.grad(edge_sum)(probs, kl))
    above = np.asarray(jax.grad(edge_sum)(probs, kl + 1e-3))
    assert not np.any(at_kink[..., 0])
    assert np.all(above[0, 0, :, 0] != 0)


# ------------------------------------------------------------------------------------------
# jit = eager = vmap
# ------------------------------------------------------------------------------------------

def test_jit_eager_and_vmap_agree():
    rng = np.random.default_rng(2)
    c = 3
    labels = rng.integers(0, c + 1, (3, 2, 24, 48)).astype(np.int32)
    labels[labels == c] = 255
    logits = rng.normal(size=(3, 2, 3, 6, c))
    tables = (rng.normal(size=(c, 3)), rng.normal(size=(c, 3)))

    def f(logits, labels):
        return losses.aaf_training_loss(logits, labels, *tables, num_classes=c, step=10, **KW)

    def g(probs, labels):
        t = losses.affinity_terms(labels, probs, num_classes=c, size=2, margin=3.0,
                                  edge_weight=tables[0][:, 1], not_edge_weight=tables[1][:, 1])
        return t.edge_mean + t.not_edge_mean

    small = np.asarray(jax.vmap(lambda lab: losses.shrink_labels(lab, (3, 6)))(labels))
    probs = np.asarray(jax.nn.softmax(logits, -1))
    with jax.disable_jit():
        eager = float(g(probs[0], small[0]))
    jitted_f, jitted_g = jax.jit(f), jax.jit(g)
    per_batch = np.array([jitted_f(logits[i], labels[i]) for i in range(3)])
    vmapped = np.asarray(jax.jit(jax.vmap(f))(logits, labels))
    assert eager > 0 and len(set(per_batch.tolist())) == 3
    np.testing.assert_allclose(float(jitted_g(probs[0], small[0])), eager, rtol=1e-13)
    np.testing.assert_allclose(vmapped, per_batch, rtol=1e-13)
    np.testing.assert_allclose(jax.jit(jax.vmap(g))(probs, small),
                               [jitted_g(probs[i], small[i]) for i in range(3)], rtol=1e-13)


# ------------------------------------------------------------------------------------------
# the minimax optimiser
# ------------------------------------------------------------------------------------------

def test_one_step_raises_the_loss_through_the_tables_and_lowers_it_through_the_network():
    rng = np.random.default_rng(3)
    c = 4
    labels = rng.integers(0, c, (2, 6, 6))
    labels = np.repeat(np.repeat(labels, 8, 1), 8, 2)  # 48x48 crops of 8x8 blocks
    params = {"logits": jnp.asarray(rng.normal(size=(2, 6, 6, c))),
              "tables": init_aaf_tables(c, jnp.float64)}
    tx = aaf_optimizer({"logits": "network", "tables": ("aaf", "aaf")}, base_lr=0.05,
                       num_steps=100)

    @jax.jit
    def loss(p):
        return losses.aaf_training_loss(p["logits"], labels, *p["tables"], num_classes=c,
                                        step=0, **KW)

    grads = jax.grad(loss)(params)
    updates, _ = tx.update(grads, tx.init(params), params)
    after = optax.apply_updates(params, updates)
    # the tables alone move up the loss, the network alone moves down
    up = loss({"logits": params["logits"], "tables": after["tables"]})
    down = loss({"logits": after["logits"], "tables": params["tables"]})
    before = loss(params)
    assert float(up) > float(before) > float(down)
    for new, g in zip(after["tables"], grads["tables"]):
        assert np.any(np.asarray(g))
        np.testing.assert_allclose(new, 0.05 * np.asarray(g), rtol=1e-12)  # +lr * gradient


def test_poly_schedule_head_multiplier_and_weight_decay():
    lr = poly_learning_rate(1e-3, 30001, step_offset=10)
    np.testing.assert_allclose(lr(5), 1e-3 * (1 - 15 / 30001) ** 0.9, rtol=1e-12)
    params = {"body": jnp.ones(2), "head": jnp.ones(2), "t": jnp.ones(2)}
    grads = {"body": jnp.ones(2), "head": jnp.ones(2), "t": jnp.ones(2)}
    tx = aaf_optimizer({"body": "network", "head": "head", "t": "aaf"}, base_lr=0.1,
                       num_steps=10, weight_decay=0.5)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["body"], -0.1 * 1.5)   # gradient + wd * w
    np.testing.assert_allclose(updates["head"], -1.0 * 1.5)   # 10 x lr
    np.testing.assert_allclose(updates["t"], +0.1)            # ascent, no weight decay


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------

def test_bad_inputs_raise_one_clear_value_error():
    probs = np.full((1, 4, 4, 3), 1 / 3)
    labels = np.zeros((1, 4, 4), np.int32)
    with pytest.raises(ValueError, match="probs"):
        losses.affinity_terms(labels, probs[0], num_classes=3, size=1, margin=3.0)
    with pytest.raises(ValueError, match="num_classes"):
        losses.affinity_terms(labels, probs, num_classes=4, size=1, margin=3.0)
    with pytest.raises(ValueError, match="size"):
        losses.affinity_terms(labels, probs, num_classes=3, size=0, margin=3.0)
    with pytest.raises(ValueError, match="labels"):
        losses.affinity_terms(labels[:, :3], probs, num_classes=3, size=1, margin=3.0)
    with pytest.raises(ValueError, match="labels"):
        losses.affinity_terms(labels.astype(float), probs, num_classes=3, size=1, margin=3.0)
    with pytest.raises(ValueError, match="edge_weight"):
        losses.affinity_terms(labels, probs, num_classes=3, size=1, margin=3.0,
                              edge_weight=np.ones(4))
    with pytest.raises(ValueError, match="edge_weights"):
        losses.aaf_training_loss(probs, labels, np.zeros((3, 2)), np.zeros((3, 3)),
                                 num_classes=3, step=0, **KW)
    with pytest.raises(ValueError, match="num_steps"):
        losses.affinity_training_loss(probs, labels, num_classes=3, step=0, margin=3.0,
                                      lambda_edge=1.0, lambda_not_edge=1.0, num_steps=0)
