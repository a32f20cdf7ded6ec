"""Data: file formats (``io``), synthetic scenes, baselines, datasets and transforms.

Re-exported here: HD3's confidence upsampling (``get_upsampled_probabilities_hd3``).
"""

from ppac_jax.data.hd3 import get_upsampled_probabilities_hd3, interpolate_probabilities

__all__ = ["get_upsampled_probabilities_hd3", "interpolate_probabilities"]
