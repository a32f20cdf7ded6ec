"""NaN / inf under a mask changes neither the value nor the gradient of any loss or metric.

Every masked loss and metric of the library is one line of ``CASES``:
``(name, fn, make_inputs, diff_argnums)``. ``make_inputs(fill)`` returns the positional
arguments of ``fn`` with the float value ``fill`` planted at every masked-out pixel of every
float input (pixels whose mask is False, or whose label is an ignore label); ``diff_argnums``
names the arguments to differentiate (empty for counts). The test compares each poisoned call
(NaN, +inf, -inf) with a call whose masked pixels hold an ordinary finite value: values must be
equal, gradients finite, equal, and exactly zero at the poisoned pixels.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppac_jax import losses, metrics

_SHAPE = (2, 4, 5)


def _mask():
    valid = np.ones(_SHAPE, bool)
    valid[0, 1, 2] = valid[0, 3, 4] = valid[1, 0, 0] = False
    return valid


def _plant(array, valid, fill):
    array = np.array(array)
    array[~valid] = fill
    return array


def _flow_pair(fill):
    """pred, gt [2, 4, 5, 2] float32 and valid [2, 4, 5]; `fill` planted in pred and gt."""
    rng = np.random.default_rng(0)
    valid = _mask()
    pred = rng.normal(size=_SHAPE + (2,)).astype(np.float32) * 4
    gt = rng.normal(size=_SHAPE + (2,)).astype(np.float32) * 4
    return _plant(pred, valid, fill), _plant(gt, valid, fill), valid


def _segmentation(fill):
    """Float class scores whose argmax is taken, int labels [2, 4, 5] with ignore label 255."""
    rng = np.random.default_rng(1)
    valid = _mask()
    labels = np.where(valid, rng.integers(0, 3, _SHAPE), 255)
    scores = _plant(rng.normal(size=_SHAPE + (3,)).astype(np.float32), valid, fill)
    return scores, labels


def _confusion(scores, labels):
    pred = jnp.argmax(jnp.asarray(scores), axis=-1)
    # an argmax over NaN scores is an arbitrary class: also plant out-of-range predictions
    pred = jnp.where(jnp.asarray(labels) == 255, 10**6, pred)
    return metrics.confusion_matrix(pred, labels, num_classes=3)


def _streaming_confusion(scores, labels):
    pred = np.where(labels == 255, -7, np.argmax(np.asarray(scores), axis=-1))
    return metrics.ConfusionMatrix(3).update(pred, labels).matrix


def _ce(scores, labels, **kw):
    return losses.cross_entropy(jnp.asarray(scores), jnp.asarray(labels), **kw)


_AAF = dict(num_classes=3, margin=3.0, lambda_edge=1.0, lambda_not_edge=1.0, step=0, num_steps=10)


# (name, fn, make_inputs, diff_argnums): one line per masked loss or metric
CASES = [
    ("losses.cross_entropy", _ce, _segmentation, (0,)),
    ("losses.cross_entropy[threshold]", functools.partial(_ce, threshold=0.9), _segmentation, (0,)),
    ("losses.per_pixel_cross_entropy",
     lambda s, l: losses.per_pixel_cross_entropy(jnp.asarray(s), jnp.asarray(l))[0],
     _segmentation, (0,)),
    ("losses.affinity_training_loss",
     lambda s, l: losses.affinity_training_loss(jnp.asarray(s), jnp.asarray(l), **_AAF),
     _segmentation, (0,)),
    ("losses.aaf_training_loss",
     lambda s, l: losses.aaf_training_loss(jnp.asarray(s), jnp.asarray(l), jnp.zeros((3, 3)),
                                           jnp.zeros((3, 3)), **_AAF), _segmentation, (0,)),
    ("losses.epe_loss", losses.epe_loss, _flow_pair, (0, 1)),
    ("metrics.epe", metrics.epe, _flow_pair, (0, 1)),
    ("metrics.outlier_rate", metrics.outlier_rate, _flow_pair, ()),
    ("metrics.rmse", metrics.rmse, _flow_pair, (0, 1)),
    ("metrics.confusion_matrix", _confusion, _segmentation, ()),
    ("metrics.ConfusionMatrix", _streaming_confusion, _segmentation, ()),
]

_FINITE_FILL = 3.0
_POISONS = [np.nan, np.inf, -np.inf]


@functools.cache
def _jitted_value_and_grads(fn, diff_argnums):
    """One compiled function per case, shared by its clean and poisoned calls."""
    grad = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums=diff_argnums)
    return jax.jit(lambda *a: (fn(*a), grad(*a)))


def _value_and_grads(fn, args, diff_argnums):
    if not diff_argnums:
        return np.asarray(fn(*args)), ()
    value, grads = _jitted_value_and_grads(fn, diff_argnums)(*args)
    return np.asarray(value), tuple(np.asarray(g) for g in grads)


@pytest.mark.parametrize("name,fn,make_inputs,diff_argnums", CASES, ids=[c[0] for c in CASES])
def test_non_finite_under_mask_is_harmless(name, fn, make_inputs, diff_argnums):
    clean_args = make_inputs(_FINITE_FILL)
    clean_value, clean_grads = _value_and_grads(fn, clean_args, diff_argnums)
    assert np.all(np.isfinite(clean_value)), name
    for poison in _POISONS:
        args = make_inputs(poison)
        planted = [np.asarray(a) for a in args if np.issubdtype(np.asarray(a).dtype, np.floating)]
        assert any(np.sum(~np.isfinite(a)) >= 3 for a in planted), "nothing was planted"
        value, grads = _value_and_grads(fn, args, diff_argnums)
        np.testing.assert_array_equal(value, clean_value, err_msg=f"{name} value, fill {poison}")
        for argnum, grad, clean_grad in zip(diff_argnums, grads, clean_grads):
            assert np.all(np.isfinite(grad)), f"{name}: non-finite gradient, fill {poison}"
            np.testing.assert_array_equal(grad, clean_grad, err_msg=f"{name} grad, fill {poison}")
            poisoned = ~np.isfinite(np.asarray(args[argnum]))
            assert poisoned.any() and np.all(grad[poisoned] == 0), name


def test_issue_example_epe_loss_over_the_valid_pixels():
    """Issue 12: ones vs zeros with a NaN and an inf pixel masked out: loss sqrt(2), zero grad."""
    pred = jnp.ones((1, 4, 5, 2), jnp.float32)
    gt = np.zeros((1, 4, 5, 2), np.float32)
    gt[0, 1, 1] = np.nan
    gt[0, 2, 3, 1] = np.inf
    valid = np.isfinite(gt).all(-1)
    assert valid.sum() == 18
    loss, grad = jax.value_and_grad(losses.epe_loss)(pred, gt, valid)
    np.testing.assert_allclose(loss, np.sqrt(2.0), rtol=1e-6)
    np.testing.assert_allclose(loss, metrics.epe(pred, gt, valid)[0], rtol=1e-6)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[0, 1, 1] == 0) and np.all(grad[0, 2, 3] == 0)
