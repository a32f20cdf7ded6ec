"""Training losses (differentiable, jit-friendly). Evaluation metrics live in ppac_jax.metrics.

One module per task; every public name is re-exported here (``from ppac_jax import losses``).
"""

from ppac_jax.losses.flow import endpoint_error, epe_loss
from ppac_jax.losses.segmentation import (cross_entropy, per_pixel_cross_entropy,
                                          safe_log_softmax_probabilities,
                                          segmentation_refinement_loss)

__all__ = ["endpoint_error", "epe_loss", "cross_entropy", "per_pixel_cross_entropy",
           "safe_log_softmax_probabilities", "segmentation_refinement_loss"]
