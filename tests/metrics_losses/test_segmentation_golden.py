"""Segmentation losses, metrics, PPAC's refinement loss and HD3 confidences vs the golden files.

Tolerances: golden README 9.3 (float64: 1e-12 of max|ref|; float32: outputs 1e-5, gradients
1e-3 of max|ref|).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import convert, data, losses, metrics
from tests import golden as G


def _dtype(name):
    return np.float64 if name.endswith("_f64.npz") else np.float32


def _tol(name, kind):
    if name.endswith("_f64.npz"):
        return 1e-12
    return 1e-5 if kind == "out" else 1e-3


def _close(actual, expected, rel, name):
    expected = np.asarray(expected)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = float(np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0))
    assert err <= rel * scale, f"{name}: max error {err:.3e} > {rel:.0e} x max|ref| {scale:.3e}"


# ----------------------------------------------------------------------------- pacnet ce / fce


@functools.partial(jax.jit, static_argnames=("ignore_label",))
def _pacnet_losses(logits, labels, cot_ce, cot_fce, ignore_label):
    def f(logits):
        ce = losses.cross_entropy(logits, labels, ignore_label=ignore_label)
        fce = losses.cross_entropy(logits, labels, ignore_label=ignore_label, threshold=0.9)
        return ce * cot_ce + fce * cot_fce, (ce, fce)
    (_, (ce, fce)), grad = jax.value_and_grad(f, has_aux=True)(logits)
    return ce, fce, grad


@pytest.mark.parametrize("name", G.params_or_skip("metrics_seg_pacnet_*.npz"))
def test_pacnet_losses_and_scores(name):
    g = G.Golden(name)
    dt = _dtype(name)
    logits = jnp.asarray(G.nchw(g["in_logits"]).astype(dt))
    labels = jnp.asarray(g["in_labels"])
    ce, fce, grad = _pacnet_losses(logits, labels, jnp.asarray(g["cot_loss_ce"], dt),
                                   jnp.asarray(g["cot_loss_fce_0.9"], dt), 255)
    assert ce.dtype == dt
    _close(ce, g["out_loss_ce"], _tol(name, "out"), f"{name}: ce")
    _close(fce, g["out_loss_fce_0.9"], _tol(name, "out"), f"{name}: fce_0.9")
    _close(G.to_nchw(grad), g["grad_in_logits"], _tol(name, "grad"), f"{name}: grad logits")

    cm = metrics.ConfusionMatrix(g.meta["num_classes"])
    cm.update(np.argmax(np.asarray(logits), -1), np.asarray(labels))
    np.testing.assert_array_equal(cm.matrix, g["aux_conf"])
    miou, acc, macc = g["aux_scores"]
    assert cm.pixel_accuracy() == pytest.approx(acc, rel=1e-12)
    if "absentclass" in name:
        # pacnet averages a 0/0 = NaN for the absent class; ppac-jax skips that class
        assert np.isnan(miou) and np.isnan(macc)
        absent = (g["aux_conf"].sum(0) + g["aux_conf"].sum(1)) == 0
        assert absent.any() and np.isnan(cm.iou()[absent]).all()
        assert np.isnan(cm.class_accuracy()[absent]).all()
        assert np.isfinite(cm.miou()) and np.isfinite(cm.mean_class_accuracy())
        assert cm.miou() == pytest.approx(np.mean(cm.iou()[~absent]), rel=1e-12)
    else:
        assert cm.miou() == pytest.approx(miou, rel=1e-12)
        assert cm.mean_class_accuracy() == pytest.approx(macc, rel=1e-12)


# ----------------------------------------------------------------------------- ppac ce / mIoU


@functools.partial(jax.jit, static_argnames=("ignore_label",))
def _ppac_loss(logits, labels, cot, ignore_label):
    def f(logits):
        loss = losses.cross_entropy(logits, labels, ignore_label=ignore_label)
        return loss * cot, loss
    (_, loss), grad = jax.value_and_grad(f, has_aux=True)(logits)
    return loss, grad


@pytest.mark.parametrize("name", G.params_or_skip("metrics_seg_ppac_*.npz"))
def test_ppac_loss_and_miou(name):
    g = G.Golden(name)
    dt = _dtype(name)
    logits = jnp.asarray(G.nchw(g["in_logits"]).astype(dt))
    labels = g["in_labels"][:, 0]
    assert (labels == -1).any()
    loss, grad = _ppac_loss(logits, jnp.asarray(labels), jnp.asarray(g["cot_loss"][0], dt), -1)
    _close(loss[None], g["out_loss"], _tol(name, "out"), f"{name}: loss")
    _close(G.to_nchw(grad), g["grad_in_logits"], _tol(name, "grad"), f"{name}: grad logits")
    cm = metrics.ConfusionMatrix(g.meta["num_classes"]).update(np.argmax(np.asarray(logits), -1),
                                                               labels)
    np.testing.assert_array_equal(cm.matrix, g["aux_confusion_matrix"])
    assert cm.miou() == pytest.approx(float(g["aux_miou"]), rel=1e-12)


# ----------------------------------------------------------------------------- HD3 confidences


@jax.jit
def _hd3(vects, probs, cot):
    out, vjp = jax.vjp(lambda p: data.get_upsampled_probabilities_hd3(vects, p), probs)
    return out, vjp(cot)[0]


@pytest.mark.parametrize("name", G.params_or_skip("hd3_upsampled_probabilities_*.npz"))
def test_hd3_upsampled_probabilities(name):
    g = G.Golden(name)
    dt = _dtype(name)
    levels = len(g.meta["level_sizes"])
    vects = [jnp.asarray(G.nchw(g[f"in_full_vect_{l}"]).astype(dt)) for l in range(levels)]
    probs = [jnp.asarray(G.nchw(g[f"in_full_prob_{l}"]).astype(dt)) for l in range(levels)]
    out, grads = _hd3(vects, probs, jnp.asarray(G.nchw(g["cot_probabilities"])))
    assert out.dtype == jnp.float32  # the original's buffer, also for float64 inputs
    # float32 output: equal to its float32 rounding in both twins
    _close(G.to_nchw(out), g["out_probabilities"], 1e-6, f"{name}: probabilities")
    for l in range(levels):
        _close(G.to_nchw(grads[l]), g[f"grad_in_full_prob_{l}"], _tol(name, "grad"),
               f"{name}: grad full_prob_{l}")
    # the input dtype on request
    same = data.get_upsampled_probabilities_hd3(vects, probs, dtype=None)
    assert same.dtype == dt


# ----------------------------------------------------------------------------- PPAC refinement


@functools.lru_cache(maxsize=None)
def _refine_runner(graphdef):
    @jax.jit
    def run(params, rest, logits, images, labels, cot):
        def f(params, logits, images):
            net = nnx.merge(graphdef, params, rest)
            loss, refined = losses.segmentation_refinement_loss(net, logits, images, labels,
                                                                ignore_label=-1)
            return loss * cot, (loss, refined)
        (_, (loss, refined)), grads = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(
            params, logits, images)
        return loss, refined, grads
    return run


@pytest.mark.parametrize("name", G.params_or_skip("ppac_seg_refine_loss_*.npz"))
def test_ppac_segmentation_refinement_loss(name):
    g = G.Golden(name)
    dt = _dtype(name)
    net = convert.load_ppacnet(G.shared_dir() / "checkpoints" / g.meta["checkpoint"], dtype=dt,
                               impl="auto")
    graphdef, params, rest = nnx.split(net, nnx.Param, ...)
    logits = jnp.asarray(G.nchw(g["in_logits"]).astype(dt))
    images = jnp.asarray(G.nchw(g["in_images"]).astype(dt))
    labels = jnp.asarray(g["in_labels"][:, 0])
    loss, refined, (gparams, glogits, gimages) = _refine_runner(graphdef)(
        params, rest, logits, images, labels, jnp.asarray(g["cot_loss"][0], dt))
    out_tol, grad_tol = _tol(name, "out"), _tol(name, "grad")
    _close(loss[None], g["out_loss"], out_tol, f"{name}: loss")
    _close(G.to_nchw(refined), g["out_logits"], out_tol, f"{name}: refined logits")
    _close(G.to_nchw(glogits), g["grad_in_logits"], grad_tol, f"{name}: grad logits")
    _close(G.to_nchw(gimages), g["grad_in_images"], grad_tol, f"{name}: grad images")
    torch_grads = {"refinement_net." + k: v
                   for k, v in convert.export_torch_gradients(net, gparams).items()}
    assert set(torch_grads) == set(g.meta["param_names"])
    analytic_zero = "refinement_net.network_guidance.4.bias"  # rounding noise (README 9.3)
    checked = 0
    for key, grad in torch_grads.items():
        norm = float(np.linalg.norm(grad))
        if key == analytic_zero:
            assert norm < (1e-9 if dt == np.float64 else 1e-4)
            continue
        assert norm == pytest.approx(g.meta["grad_norms"][key], rel=max(grad_tol, 1e-10)), key
        if f"grad_param_{key}" in g:
            _close(grad, g[f"grad_param_{key}"], grad_tol, f"{name}: grad {key}")
        else:
            step = g.meta["grad_subsample"][key]
            _close(np.ravel(grad)[::step], g[f"gsub_param_{key}"], grad_tol, f"{name}: gsub {key}")
        checked += 1
    assert checked == len(torch_grads) - 1
    for key, logit_array in (("aux_miou_input", logits), ("aux_miou_refined", refined)):
        cm = metrics.ConfusionMatrix(21).update(np.argmax(np.asarray(logit_array), -1),
                                                np.asarray(labels))
        assert cm.miou() == pytest.approx(float(g[key]), rel=1e-9), key
