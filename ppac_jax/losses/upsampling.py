"""Joint-upsampling training losses (NVlabs/pacnet ``task_jointUpsampling/main.py``;
SPEC_wave2.md 1.9): ``l2`` on normalised targets, ``epe`` / ``rmse`` on de-normalised outputs."""

from __future__ import annotations

import jax.numpy as jnp

from ppac_jax import metrics

__all__ = ["UPSAMPLING_LOSSES", "center_crop", "denormalize", "upsampling_loss"]

UPSAMPLING_LOSSES = ("l2", "epe", "rmse")


def center_crop(x, size):
    """``x [B, H, W, C]`` centre-cropped to ``size = (Ht, Wt)``: offsets ``((H-Ht)//2, (W-Wt)//2)``.

    Raises:
      ValueError: ``size`` larger than ``x``.
    """
    big_h, big_w = x.shape[1:3]
    h, w = size
    if h > big_h or w > big_w:
        raise ValueError(f"center_crop: size {tuple(size)} is larger than the input "
                         f"{(big_h, big_w)}")
    y0, x0 = (big_h - h) // 2, (big_w - w) // 2
    return x[:, y0:y0 + h, x0:x0 + w]


def _range(raw_range, channels):
    raw_range = jnp.asarray(raw_range)
    if raw_range.ndim != 3 or raw_range.shape[1:] != (channels, 2):
        raise ValueError(f"raw_range must be [B, {channels}, 2] (min, max), got "
                         f"{raw_range.shape}")
    raw_min = raw_range[:, None, None, :, 0]
    return raw_min, raw_range[:, None, None, :, 1] - raw_min


def denormalize(output, raw_range):
    """``output * (max - min) + min`` per sample and channel; ``raw_range`` ``[B, C, 2]``."""
    raw_min, raw_scale = _range(raw_range, output.shape[-1])
    return output * raw_scale + raw_min


def upsampling_loss(output, target, raw_range, loss_type: str = "l2"):
    """The original's training loss of a joint-upsampling network.

    Args:
      output: ``[B, H, W, C]`` network output in normalised units, already cropped to the
        target (see :func:`center_crop`).
      target: ``[B, H, W, C]`` raw target (metres, pixels).
      raw_range: ``[B, C, 2]`` (min, max) of the low-resolution input per sample and channel.
      loss_type: ``"l2"``: mean squared error against ``(target - min) / (max - min)``;
        ``"epe"``: :func:`ppac_jax.metrics.upsampling_epe` of the de-normalised output;
        ``"rmse"``: :func:`ppac_jax.metrics.upsampling_rmse` likewise.

    Returns:
      Scalar.

    Raises:
      ValueError: unknown ``loss_type`` or mismatched shapes.
    """
    if loss_type not in UPSAMPLING_LOSSES:
        raise ValueError(f"loss_type must be one of {UPSAMPLING_LOSSES}, got {loss_type!r}")
    if output.shape != target.shape:
        raise ValueError(f"output {output.shape} and target {target.shape} must have the same "
                         f"shape (crop the output with center_crop)")
    raw_min, raw_scale = _range(raw_range, output.shape[-1])
    if loss_type == "l2":
        return jnp.mean(jnp.square(output - (target - raw_min) / raw_scale))
    raw = output * raw_scale + raw_min
    if loss_type == "epe":
        return metrics.upsampling_epe(raw, target)
    return metrics.upsampling_rmse(raw, target)
