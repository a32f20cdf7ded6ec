"""Training losses (differentiable, jit-friendly). Evaluation metrics live in ppac_jax.metrics.

One module per task; every public name is re-exported here (``from ppac_jax import losses``).
"""

from ppac_jax.losses.flow import endpoint_error, epe_loss
from ppac_jax.losses.upsampling import center_crop, denormalize, upsampling_loss

__all__ = ["endpoint_error", "epe_loss", "center_crop", "denormalize", "upsampling_loss"]
