"""Segmentation losses: cross entropy with an ignore label, and PPAC's refinement objective.

Ignored pixels are selected away (``jnp.where`` on the inputs) before any arithmetic, so
non-finite logits under them change neither the loss nor its gradient.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["cross_entropy", "per_pixel_cross_entropy", "segmentation_refinement_loss",
           "safe_log_softmax_probabilities"]


def _check(logits, labels):
    if logits.ndim != 4:
        raise ValueError(f"logits: expected [B, H, W, C], got shape {logits.shape}")
    if labels.shape != logits.shape[:3]:
        raise ValueError(f"labels: expected shape {logits.shape[:3]} (the logits' [B, H, W]), got "
                         f"{labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels: expected an integer array, got dtype {labels.dtype}")


def _check_label_values(labels, num_classes, ignore_label):
    """Reject labels outside ``[0, C) ∪ {ignore_label}`` when they are concrete (not traced)."""
    if isinstance(labels, jax.core.Tracer):
        return
    bad = (labels != ignore_label) & ((labels < 0) | (labels >= num_classes))
    if bool(jnp.any(bad)):
        values = sorted({int(v) for v in jnp.unique(labels[bad])[:5]})
        raise ValueError(f"labels: values must lie in [0, {num_classes}) or equal ignore_label="
                         f"{ignore_label}, found {values}")


def per_pixel_cross_entropy(logits, labels, *, ignore_label=255):
    """Per-pixel cross entropy ``-log softmax(logits)[label]``, 0 at ignored pixels.

    Args:
      logits: ``[B, H, W, C]`` float class scores.
      labels: ``[B, H, W]`` (or ``[B, H, W, 1]``) integer classes in ``[0, C)``;
        ``ignore_label`` marks void pixels.
        Other labels outside ``[0, C)`` raise when ``labels`` is concrete; under ``jit`` they
        count as ignored.
      ignore_label: the void label (pacnet 255; PPAC's loader maps 255 to -1).

    Returns:
      ``(ce [B, H, W], valid [B, H, W] bool)``; ``ce`` is in the logits' dtype.

    Raises:
      ValueError: shapes or label dtype do not fit, or (concrete) labels outside
        ``[0, C) ∪ {ignore_label}``.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if labels.ndim == 4 and labels.shape[-1] == 1:  # [B, H, W, 1] (PPAC's label layout)
        labels = labels[..., 0]
    _check(logits, labels)
    num_classes = logits.shape[-1]
    _check_label_values(labels, num_classes, ignore_label)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    safe_logits = jnp.where(valid[..., None], logits, jnp.zeros((), logits.dtype))
    safe_labels = jnp.where(valid, labels, 0)
    log_p = jax.nn.log_softmax(safe_logits, axis=-1)
    picked = jnp.take_along_axis(log_p, safe_labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.where(valid, -picked, jnp.zeros((), log_p.dtype)), valid


def cross_entropy(logits, labels, *, ignore_label=255, threshold=None):
    """Segmentation cross entropy (pacnet ``ce`` / ``fce_<t>``; PPAC ``CrossEntropyLoss``).

    Args:
      logits: ``[B, H, W, C]`` float class scores (NHWC).
      labels: ``[B, H, W]`` (or ``[B, H, W, 1]``) integer labels; pixels equal to
        ``ignore_label`` do not count.
      ignore_label: void label: 255 for pacnet / VOC PNGs, -1 for PPAC's
        ``CrossEntropySegmentationCalculator``.
      threshold: ``None``: mean CE over the non-ignored pixels (0 when every pixel is ignored;
        the original returns NaN there). ``t`` in (0, 1]: pacnet's ``fce_<t>``: per-pixel CE
        with ignored pixels and pixels whose CE is below ``-log t`` (already confident) set to
        0, averaged over **all** ``B*H*W`` pixels, ignored ones included (pacnet's quirk,
        SPEC_wave2 2.9).

    Returns:
      Scalar loss in the logits' dtype.

    Raises:
      ValueError: shapes, label dtype, label values (concrete labels outside
        ``[0, C) ∪ {ignore_label}``) or ``threshold`` out of range.
    """
    ce, valid = per_pixel_cross_entropy(logits, labels, ignore_label=ignore_label)
    if threshold is None:
        count = jnp.sum(valid)
        return jnp.sum(ce) / jnp.maximum(count, 1).astype(ce.dtype)
    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold: expected a probability in (0, 1], got {threshold}")
    hard = ce >= -math.log(threshold)
    return jnp.sum(jnp.where(hard, ce, jnp.zeros((), ce.dtype))) / ce.size


def safe_log_softmax_probabilities(logits):
    """``log(max(softmax(logits), 1e-20))`` over the last axis (PPAC's ``safe_log``, not
    ``log_softmax``: probabilities below 1e-20 are clamped). ``[..., C]`` -> ``[..., C]``."""
    logits = jnp.asarray(logits)
    p = jax.nn.softmax(logits, axis=-1)
    return jnp.log(jnp.maximum(p, jnp.asarray(1e-20, p.dtype)))


def segmentation_refinement_loss(net, logits, images, labels, *, ignore_label=255):
    """PPAC's segmentation objective (``CrossEntropyNet`` of visinf/ppac_refinement).

    ``refined = net(logits, log(max(softmax(logits), 1e-20)), images)`` and
    ``loss = cross_entropy(refined, labels, ignore_label=ignore_label)``.

    Args:
      net: a refinement network called as ``net(estimates, log_probabilities, images)``, e.g.
        :class:`ppac_jax.nn.PPacNet` or ``convert.load_ppacnet('segmentation_refinement_pascal.pth')``.
      logits: ``[B, H, W, C]`` input segmentation logits (full resolution).
      images: ``[B, H, W, 3]`` ImageNet-normalised RGB (``data.transforms.normalize_imagenet``).
      labels: ``[B, H, W]`` integer labels, ``ignore_label`` = void.
      ignore_label: 255 (VOC PNG) or -1 (PPAC's loader).

    Returns:
      ``(loss scalar, refined_logits [B, H, W, C_out])``; differentiable w.r.t. ``logits``,
      ``images`` and the net's parameters.

    Raises:
      ValueError: logits, images and labels disagree in batch or spatial size.
    """
    logits = jnp.asarray(logits)
    images = jnp.asarray(images)
    if logits.ndim != 4 or images.ndim != 4 or images.shape[:3] != logits.shape[:3]:
        raise ValueError(f"logits [B, H, W, C] and images [B, H, W, 3] must share B, H, W, got "
                         f"{logits.shape} and {images.shape}")
    refined = net(logits, safe_log_softmax_probabilities(logits), images)
    return cross_entropy(refined, labels, ignore_label=ignore_label), refined
