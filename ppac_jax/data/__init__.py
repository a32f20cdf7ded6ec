"""Data: readers, synthetic scenes, datasets and per-task input pipelines."""

from ppac_jax.data.upsampling import AssembleJointUpsamplingInputs, get_lowres

__all__ = ["AssembleJointUpsamplingInputs", "get_lowres"]
