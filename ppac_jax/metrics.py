"""Evaluation metrics: flow end-point error, KITTI outlier rate, RMSE, streaming mIoU.

`epe`, `outlier_rate`, `rmse` and `confusion_matrix` are jax.numpy functions (jit-able, work on
NumPy inputs too); `aee` and `ConfusionMatrix` accumulate over a data set in NumPy.
Masked metrics select their inputs with the mask before any arithmetic, so NaN/inf under the
mask changes neither a value nor a gradient.
"""

from __future__ import annotations

from typing import Iterable, Optional

import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["epe", "outlier_rate", "aee", "rmse", "confusion_matrix", "iou_from_confusion",
           "miou_from_confusion", "class_accuracy_from_confusion",
           "mean_class_accuracy_from_confusion", "ConfusionMatrix", "IGNORE_LABELS",
           "boundary_band", "upsampling_rmse", "upsampling_epe"]

# Labels excluded from segmentation metrics.
IGNORE_LABELS = (255, -1)
_OUTLIER_ABS = 3.0
_OUTLIER_REL = 0.05


def _flow_args(pred, gt, valid):
    pred = jnp.asarray(pred)
    gt = jnp.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    if pred.ndim not in (3, 4) or pred.shape[-1] != 2:
        raise ValueError(f"pred: expected [B, H, W, 2] or [H, W, 2], got {pred.shape}")
    if valid is None:
        valid = jnp.ones(pred.shape[:-1], bool)
    else:
        valid = jnp.asarray(valid)
        if valid.shape == pred.shape[:-1] + (1,):
            valid = valid[..., 0]
        if valid.shape != pred.shape[:-1]:
            raise ValueError(f"valid: expected shape {pred.shape[:-1]}, got {valid.shape}")
        valid = valid.astype(bool)
    # select before arithmetic: non-finite values under the mask reach no value or gradient
    pred = jnp.where(valid[..., None], pred, 0)
    gt = jnp.where(valid[..., None], gt, 0)
    return pred, gt, valid


def _per_image_mean(values, valid):
    """Mean of `values` over valid pixels per image (axes -2, -1); NaN when none is valid.

    `values` must already be finite under the mask (callers select their inputs first)."""
    total = jnp.sum(jnp.where(valid, values, 0), axis=(-2, -1))
    return total / jnp.sum(valid, axis=(-2, -1))


def _error(pred, gt):
    diff = (pred - gt).astype(jnp.promote_types(pred.dtype, jnp.float32))
    sq = jnp.sum(diff * diff, axis=-1)
    # sqrt has an infinite derivative at 0 (every masked pixel): keep the gradient finite
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)


def epe(pred, gt, valid=None):
    """Per-image mean end-point error ‖pred - gt‖₂ over valid pixels.

    Args:
      pred, gt: `[B, H, W, 2]` or `[H, W, 2]` flow.
      valid: optional `[B, H, W]` / `[H, W]` (or trailing 1) bool mask; default all pixels.

    Returns:
      `[B]` (or scalar) EPE in pixels; NaN for an image without valid pixels.
    """
    pred, gt, valid = _flow_args(pred, gt, valid)
    return _per_image_mean(_error(pred, gt), valid)


def outlier_rate(pred, gt, valid=None):
    """Per-image KITTI Fl outlier rate in percent.

    A valid pixel is an outlier when its end-point error is > 3 px **and** > 5 % of ‖gt‖.

    Args: as `epe`.

    Returns:
      `[B]` (or scalar) percentage in [0, 100]; NaN for an image without valid pixels.
    """
    pred, gt, valid = _flow_args(pred, gt, valid)
    error = _error(pred, gt)
    magnitude = _error(gt, jnp.zeros_like(gt))
    outlier = (error > _OUTLIER_ABS) & (error > _OUTLIER_REL * magnitude)
    return 100.0 * _per_image_mean(outlier.astype(error.dtype), valid)


def aee(per_image_epe: Iterable[float]) -> float:
    """Average end-point error of a data set: the mean of per-image EPEs (NaN images skipped)."""
    values = np.concatenate([np.atleast_1d(np.asarray(v, np.float64)) for v in per_image_epe] or
                            [np.zeros(0)])
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ValueError("per_image_epe: no image with valid pixels")
    return float(values.mean())


def rmse(pred, target, valid=None):
    """Per-image root-mean-square error over valid pixels and channels.

    Args:
      pred, target: `[B, H, W, C]` or `[H, W, C]`.
      valid: optional `[B, H, W]` / `[H, W]` bool mask.

    Returns:
      `[B]` (or scalar) RMSE; NaN for an image without valid pixels.
    """
    pred = jnp.asarray(pred)
    target = jnp.asarray(target)
    if pred.shape != target.shape or pred.ndim not in (3, 4):
        raise ValueError(f"pred, target: expected equal [B, H, W, C] or [H, W, C] shapes, got "
                         f"{pred.shape} and {target.shape}")
    if valid is None:
        valid = jnp.ones(pred.shape[:-1], bool)
    valid = jnp.asarray(valid).astype(bool)
    if valid.shape != pred.shape[:-1]:
        raise ValueError(f"valid: expected shape {pred.shape[:-1]}, got {valid.shape}")
    pred = jnp.where(valid[..., None], pred, 0)
    target = jnp.where(valid[..., None], target, 0)
    diff = (pred - target).astype(jnp.promote_types(pred.dtype, jnp.float32))
    return jnp.sqrt(_per_image_mean(jnp.mean(diff * diff, axis=-1), valid))


def confusion_matrix(pred, labels, *, num_classes: int):
    """Confusion matrix counts `[num_classes, num_classes]` (rows: ground truth, cols: prediction).

    Pixels whose label is outside `[0, num_classes)` (e.g. the ignore labels 255 and -1) are not
    counted; predictions must lie in `[0, num_classes)`. jit-able.

    Args:
      pred: integer predictions, any shape.
      labels: integer ground truth, same shape as `pred`.
    """
    pred = jnp.asarray(pred)
    labels = jnp.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"pred and labels must have the same shape, got {pred.shape} and "
                         f"{labels.shape}")
    if not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    labels = labels.astype(jnp.int32)
    keep = (labels >= 0) & (labels < num_classes)
    labels = jnp.where(keep, labels, 0)
    pred = jnp.where(keep, pred, 0).astype(jnp.int32)
    index = labels * num_classes + pred
    counts = jnp.bincount(index.ravel(), weights=keep.ravel().astype(jnp.int32),
                          length=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def iou_from_confusion(matrix) -> np.ndarray:
    """Per-class IoU `[C]` from a confusion matrix; NaN where the union is empty."""
    matrix = np.asarray(matrix, np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix: expected a square [C, C] matrix, got {matrix.shape}")
    intersection = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def class_accuracy_from_confusion(matrix) -> np.ndarray:
    """Per-class accuracy `[C]` = diag / row sum (rows: ground truth); NaN without ground truth."""
    matrix = np.asarray(matrix, np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix: expected a square [C, C] matrix, got {matrix.shape}")
    rows = matrix.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rows > 0, np.diag(matrix) / rows, np.nan)


def mean_class_accuracy_from_confusion(matrix) -> float:
    """Mean per-class accuracy over the classes with ground truth (pacnet ``macc``, skipping)."""
    acc = class_accuracy_from_confusion(matrix)
    if np.all(np.isnan(acc)):
        raise ValueError("matrix: no class has ground truth (nothing counted)")
    return float(np.nanmean(acc))


def miou_from_confusion(matrix) -> float:
    """Mean IoU over classes with a non-empty union."""
    iou = iou_from_confusion(matrix)
    if np.all(np.isnan(iou)):
        raise ValueError("matrix: no class has a non-empty union (nothing counted)")
    return float(np.nanmean(iou))


class ConfusionMatrix:
    """Streaming confusion matrix for mIoU over a data set.

    >>> cm = ConfusionMatrix(21)
    >>> cm.update(pred, labels)   # any shapes, equal; labels 255 / -1 ignored
    >>> cm.miou()
    """

    def __init__(self, num_classes: int, *, ignore_labels=IGNORE_LABELS):
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_labels = tuple(ignore_labels)
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred, labels, valid: Optional[np.ndarray] = None) -> "ConfusionMatrix":
        """Add integer predictions and labels of equal shape (optional extra `valid` mask).

        Labels may carry a trailing axis of 1 (`[B, H, W, 1]` with `pred` `[B, H, W]`).
        Raises ValueError for shapes that differ otherwise, or for labels / predictions outside
        `[0, C)` that are not ignore labels.
        """
        pred = np.asarray(pred)
        labels = np.asarray(labels)
        if labels.shape == pred.shape + (1,):  # [B, H, W, 1] labels (PPAC's layout)
            labels = labels[..., 0]
        if pred.shape != labels.shape:
            raise ValueError(f"pred and labels must have the same shape, got {pred.shape} and "
                             f"{labels.shape}")
        labels = labels.astype(np.int64)
        keep = ~np.isin(labels, self.ignore_labels)
        if valid is not None:
            keep &= np.asarray(valid, bool)
        labels, pred = labels[keep], pred[keep].astype(np.int64)
        for name, values in (("labels", labels), ("pred", pred)):
            if values.size and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(f"{name}: values must lie in [0, {self.num_classes}) or be an ignore "
                                 f"label {self.ignore_labels}, got [{values.min()}, {values.max()}]")
        self.matrix += np.bincount(labels * self.num_classes + pred,
                                   minlength=self.num_classes ** 2).reshape(self.matrix.shape)
        return self

    def merge(self, matrix) -> "ConfusionMatrix":
        """Add a `[C, C]` count matrix (e.g. from the jit-able `confusion_matrix`)."""
        matrix = np.asarray(matrix)
        if matrix.shape != self.matrix.shape:
            raise ValueError(f"matrix: expected shape {self.matrix.shape}, got {matrix.shape}")
        self.matrix += matrix.astype(np.int64)
        return self

    def reset(self) -> None:
        self.matrix[:] = 0

    def iou(self) -> np.ndarray:
        """Per-class IoU `[C]`, NaN for classes with an empty union."""
        return iou_from_confusion(self.matrix)

    def miou(self) -> float:
        """Mean IoU over classes with a non-empty union."""
        return miou_from_confusion(self.matrix)

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted correctly (pacnet ``acc``: trace / total)."""
        total = self.matrix.sum()
        if total == 0:
            raise ValueError("no pixel counted yet")
        return float(np.trace(self.matrix) / total)

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall ``[C]`` (diagonal / ground-truth count), NaN without ground truth."""
        return class_accuracy_from_confusion(self.matrix)

    def mean_class_accuracy(self) -> float:
        """Mean per-class accuracy (pacnet ``macc``) over the classes that have ground truth.

        pacnet's ``seg_measures`` averages 0/0 = NaN for a class without ground truth (its bug,
        SPEC_wave2 2.9); ppac-jax skips such classes, as ``miou`` skips empty unions.
        """
        return mean_class_accuracy_from_confusion(self.matrix)


def boundary_band(labels, *, width: int = 3):
    """Pixels within ``width`` pixels of a ground-truth boundary (the "trimap" band).

    A pixel is on a boundary when one of its 8 neighbours has a different label (void labels
    count as labels here, so object/void borders are boundaries too); the band is every pixel
    whose Chebyshev distance to a boundary pixel is at most ``width``. Counting a confusion
    matrix only inside the band (``ConfusionMatrix.update(pred, labels, valid=band)``) gives the
    boundary mIoU (mIoU within ``width`` px of the boundaries; Kohli et al. 2009's trimap
    measure, as used by the AAF paper's boundary analysis). jit-able.

    Args:
      labels: ``[B, H, W]`` (or ``[H, W]``) integer ground truth.
      width: band half-width in pixels, ``>= 0`` (0: the boundary pixels themselves).

    Returns:
      bool array of ``labels``' shape.

    Raises:
      ValueError: ``labels`` not 2-D/3-D or ``width`` not a non-negative int.
    """
    labels = jnp.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels: expected [B, H, W] or [H, W], got {labels.shape}")
    if not isinstance(width, int) or isinstance(width, bool) or width < 0:
        raise ValueError(f"width must be a non-negative int, got {width!r}")
    batched = labels if labels.ndim == 3 else labels[None]
    lab = batched.astype(jnp.int32)
    window, ones, pad = (1, 3, 3), (1, 1, 1), ((0, 0), (1, 1), (1, 1))
    # neighbourhood max and min (edge pixels compare only with in-image neighbours)
    hi = lax.reduce_window(lab, jnp.int32(jnp.iinfo(jnp.int32).min), lax.max, window, ones, pad)
    lo = lax.reduce_window(lab, jnp.int32(jnp.iinfo(jnp.int32).max), lax.min, window, ones, pad)
    boundary = (hi != lab) | (lo != lab)
    if width:
        size = 2 * width + 1
        boundary = lax.reduce_window(boundary, jnp.bool_(False), lax.bitwise_or,
                                     (1, size, size), ones,
                                     ((0, 0), (width, width), (width, width)))
    return boundary if labels.ndim == 3 else boundary[0]

# ---------------------------------------------------------------------------------------------
# joint upsampling (NVlabs/pacnet task_jointUpsampling/models.py th_rmse / th_epe)


def _safe_sqrt(sq):
    """sqrt with a zero (not infinite) derivative at 0."""
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _upsampling_args(pred, gt, name):
    pred = jnp.asarray(pred)
    gt = jnp.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 4:
        raise ValueError(f"{name}: pred and gt must be equal [B, H, W, C] shapes, got "
                         f"{pred.shape} and {gt.shape}")
    return pred, gt


def upsampling_rmse(pred, gt):
    """Joint-upsampling RMSE, the original's ``th_rmse`` (SPEC_wave2.md 1.7).

    ``mean_b sqrt(sum_c mean_{y,x} (pred - gt)^2)``: per-image RMSE with the channels summed
    inside the root, averaged over the batch. In the target's units (NYU depth: metres).
    Differentiable; the gradient is 0 (not NaN) for an image with zero error.

    Args:
      pred, gt: ``[B, H, W, C]``.

    Returns:
      Scalar.

    Raises:
      ValueError: shapes differ or are not rank 4.
    """
    pred, gt = _upsampling_args(pred, gt, "upsampling_rmse")
    diff = pred - gt
    per_image = jnp.sum(jnp.mean(diff * diff, axis=(1, 2)), axis=-1)
    return jnp.mean(_safe_sqrt(per_image))


def upsampling_epe(pred, gt, small_flow: float = -1.0, unknown_flow_thresh: float = 1e7):
    """Joint-upsampling flow end-point error, the original's ``th_epe`` (SPEC_wave2.md 1.7).

    1. positions where ``|gt_u|`` or ``|gt_v|`` exceeds ``unknown_flow_thresh`` get error 0
       but stay in the mean (the original's rule; the inputs are never modified);
    2. ``e = ||pred - gt||_2`` per position;
    3. with ``small_flow >= 0`` only positions with ``|gt_u| > small_flow`` or
       ``|gt_v| > small_flow`` are kept (which also drops the unknown positions);
    4. the mean of ``e`` over all kept ``B*H*W`` positions (0 when none is kept).

    Values at unknown positions (also inf / NaN) change neither the value nor the gradient.
    The gradient is 0 (not NaN) where the error is 0.

    Args:
      pred, gt: ``[B, H, W, 2]`` flow in pixels.
      small_flow: threshold of step 3; negative disables it.
      unknown_flow_thresh: threshold of step 1.

    Returns:
      Scalar EPE in pixels.

    Raises:
      ValueError: shapes differ, are not rank 4, or ``C != 2``.
    """
    pred, gt = _upsampling_args(pred, gt, "upsampling_epe")
    if pred.shape[-1] != 2:
        raise ValueError(f"upsampling_epe: expected [B, H, W, 2] flow, got {pred.shape}")
    unknown = jnp.any(~(jnp.abs(gt) <= unknown_flow_thresh), axis=-1, keepdims=True)
    gt = jnp.where(unknown, 0.0, gt).astype(gt.dtype)
    pred = jnp.where(unknown, 0.0, pred).astype(pred.dtype)
    diff = pred - gt
    err = _safe_sqrt(jnp.sum(diff * diff, axis=-1))
    if small_flow < 0:
        return jnp.mean(err)
    keep = jnp.any(jnp.abs(gt) > small_flow, axis=-1)
    total = jnp.sum(jnp.where(keep, err, 0.0))
    return total / jnp.maximum(jnp.sum(keep), 1).astype(err.dtype)
