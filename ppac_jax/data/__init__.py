"""Data: file formats (``io``), synthetic scenes, baselines, datasets, transforms and per-task
input pipelines.

Re-exported here: HD3's confidence upsampling (``get_upsampled_probabilities_hd3``) and the
joint-upsampling inputs (``get_lowres``, ``AssembleJointUpsamplingInputs``).
"""

from ppac_jax.data.hd3 import get_upsampled_probabilities_hd3, interpolate_probabilities
from ppac_jax.data.upsampling import AssembleJointUpsamplingInputs, get_lowres

__all__ = ["get_upsampled_probabilities_hd3", "interpolate_probabilities",
           "AssembleJointUpsamplingInputs", "get_lowres"]
