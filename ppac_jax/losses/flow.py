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
      Scalar loss (0 when no pixel is valid).
    """
    err = endpoint_error(pred, gt)
    if valid is None:
        return jnp.mean(err)
    valid = jnp.asarray(valid, err.dtype)
    if valid.shape != err.shape:
        raise ValueError(f"valid: expected shape {err.shape}, got {valid.shape}")
    return jnp.sum(err * valid) / jnp.maximum(jnp.sum(valid), 1.0)
