"""Training losses (differentiable, jit-friendly). Evaluation metrics live in ppac_jax.metrics.

One module per task; every public name is re-exported here (``from ppac_jax import losses``).
"""

from ppac_jax.losses.aaf import (AAF_SIZES, AffinityTerms, TrainingLossTerms, aaf_training_loss,
                                 aaf_training_terms, affinity_terms, affinity_training_loss,
                                 affinity_training_terms, edges_from_label,
                                 eightcorner_activation, eightway_activation, ignores_from_label,
                                 shrink_labels)
from ppac_jax.losses.flow import endpoint_error, epe_loss
from ppac_jax.losses.segmentation import (cross_entropy, per_pixel_cross_entropy,
                                          safe_log_softmax_probabilities,
                                          segmentation_refinement_loss)
from ppac_jax.losses.upsampling import center_crop, denormalize, upsampling_loss

__all__ = ["AAF_SIZES", "AffinityTerms", "TrainingLossTerms", "aaf_training_loss",
           "aaf_training_terms", "affinity_terms", "affinity_training_loss",
           "affinity_training_terms", "cross_entropy", "edges_from_label",
           "eightcorner_activation", "eightway_activation", "endpoint_error", "epe_loss",
           "ignores_from_label", "per_pixel_cross_entropy", "safe_log_softmax_probabilities",
           "segmentation_refinement_loss", "shrink_labels", "center_crop",
           "denormalize", "upsampling_loss"]
