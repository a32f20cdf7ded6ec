"""Data: file formats (``io``), synthetic scenes, baselines, datasets and per-task inputs.

Re-exported here: HD3's confidence upsampling (``get_upsampled_probabilities_hd3``) and the
joint-upsampling inputs (``get_lowres``, ``AssembleJointUpsamplingInputs``).
"""

from ppac_jax.data.hd3 import get_upsampled_probabilities_hd3, interpolate_probabilities
from ppac_jax.data.upsampling import AssembleJointUpsamplingInputs, get_lowres

__all__ = ["AssembleJointUpsamplingInputs", "get_lowres", "get_upsampled_probabilities_hd3",
           "interpolate_probabilities"]
