"""Flow losses: end-point error (PPAC flow refinement)."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["endpoint_error", "epe_loss"]


def endpoint_error(pred, gt):
    """Per-pixel end-point error ‖pred - gt‖₂.

    Args:
      pred, gt: [..., 2] flow.

    Returns:
      [...] error, with a gradient that stays finite where pred == gt.
    """
    if pred.shape != gt.shape or pred.shape[-1] != 2:
        raise ValueError(f"pred, gt: expected equal [..., 2] shapes, got {pred.shape} and {gt.shape}")
    sq = jnp.sum(jnp.square(pred - gt), axis=-1)
    # sqrt has an infinite derivative at 0: differentiate sqrt(max(sq, tiny)) instead
    safe = jnp.where(sq > 1e-12, sq, 1.0)
    return jnp.where(sq > 1e-12, jnp.sqrt(safe), 0.0)


def epe_loss(pred, gt, valid=None):
    """Mean end-point error over the valid pixels of a batch (the PPAC flow training loss).

    Args:
      pred, gt: [B, H, W, 2] flow.
      valid: optional [B, H, W] bool/float mask (default: every pixel).

    Returns:
      Scalar loss (0 when no pixel is valid). ``pred`` and ``gt`` are selected by ``valid``
      before any arithmetic, so NaN/inf under the mask (e.g. unknown Middlebury flow) changes
      neither the loss nor its gradient, which is exactly 0 at invalid pixels.

    Raises:
      ValueError: if the shapes disagree.
    """
    if valid is None:
        return jnp.mean(endpoint_error(pred, gt))
    if jnp.shape(valid) != jnp.shape(pred)[:-1]:
        raise ValueError(f"valid: expected shape {jnp.shape(pred)[:-1]}, got {jnp.shape(valid)}")
    keep = jnp.asarray(valid).astype(bool)
    pred = jnp.where(keep[..., None], pred, 0)
    gt = jnp.where(keep[..., None], gt, 0)
    err = endpoint_error(pred, gt)
    weight = keep.astype(err.dtype)
    return jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1.0)
