"""Flax NNX modules built from :mod:`ppac_jax.ops`."""

from ppac_jax.nn import fillers
from ppac_jax.nn.crf import PacCRF, PacCRFLoose
from ppac_jax.nn.layers import (Buffer, Conv2d, NormalizedPacConv2d, PacConv2d,
                                PacConvTranspose2d, PacPool2d, ProbPacConv2d, ReLU)
from ppac_jax.nn.refine import PacNetAdvancedNormalization, PPacNet
from ppac_jax.nn.upsample import (DJIF, Bilinear, DJIFWide, JointBilateral, PacJointUpsample,
                                  PacJointUpsampleLite, apply_model)

__all__ = [
    "fillers",
    "Buffer",
    "Conv2d",
    "NormalizedPacConv2d",
    "PacConv2d",
    "PacConvTranspose2d",
    "PacPool2d",
    "ProbPacConv2d",
    "ReLU",
    "PPacNet",
    "PacNetAdvancedNormalization",
    "PacCRF",
    "PacCRFLoose",
    "PacJointUpsample",
    "PacJointUpsampleLite",
    "DJIF",
    "DJIFWide",
    "JointBilateral",
    "Bilinear",
    "apply_model",
]
