"""Flax NNX modules built from :mod:`ppac_jax.ops`."""

from ppac_jax.nn import fillers
from ppac_jax.nn.crf import PacCRF, PacCRFLoose
from ppac_jax.nn.layers import (Buffer, Conv2d, NormalizedPacConv2d, PacConv2d,
                                PacConvTranspose2d, PacPool2d, ProbPacConv2d, ReLU)
from ppac_jax.nn.norm import BatchNorm2d, BatchStat
from ppac_jax.nn.refine import PacNetAdvancedNormalization, PPacNet
from ppac_jax.nn.hot_swap import Guide, HotSwappedPacConv2d, hot_swap, set_guide
from ppac_jax.nn.crf_models import (ModelWithConvCrf, ModelWithCrf, create_model, freeze,
                                    loose_state_dict, parse_model_name)
from ppac_jax.nn.segment import ConvTranspose2d, FCN8s, FCN8sAltPad, FCN8sPac
from ppac_jax.nn.upsample import (DJIF, Bilinear, DJIFWide, JointBilateral, PacJointUpsample,
                                  PacJointUpsampleLite, apply_model)

__all__ = [
    "fillers",
    "BatchNorm2d",
    "BatchStat",
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
    "ConvTranspose2d",
    "FCN8s",
    "FCN8sAltPad",
    "FCN8sPac",
    "Guide",
    "HotSwappedPacConv2d",
    "hot_swap",
    "set_guide",
    "ModelWithCrf",
    "ModelWithConvCrf",
    "create_model",
    "freeze",
    "loose_state_dict",
    "parse_model_name",
    "PacJointUpsample",
    "PacJointUpsampleLite",
    "DJIF",
    "DJIFWide",
    "JointBilateral",
    "Bilinear",
    "apply_model",
]
