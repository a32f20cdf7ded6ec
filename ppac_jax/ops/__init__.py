"""Functional pixel-adaptive convolution ops (pure JAX, NHWC).

Everything else in ppac-jax is built from these functions.
"""

from ppac_jax.ops.crf import (PairwiseTerm, TermParams, blur_pool, blur_upsample,
                              crf_edge_kernels, crf_message, crf_output, make_term, mean_field,
                              mean_field_step, pac_crf, position_features, yxrgb_features)
from ppac_jax.ops.fused import (fused_normalized_pac_conv2d, fused_pac_conv2d,
                                fused_pac_conv_transpose2d, fused_prob_pac_conv2d)
from ppac_jax.ops.adapting_kernel import pac_kernel
from ppac_jax.ops.pac import pac_conv2d, pac_conv_transpose2d, pac_pool2d
from ppac_jax.ops.prob import normalized_pac_conv2d, prob_pac_conv2d
from ppac_jax.ops.resample import max_pool_ceil, resize_bilinear

__all__ = [
    "pac_kernel",
    "pac_conv2d",
    "pac_conv_transpose2d",
    "pac_pool2d",
    "prob_pac_conv2d",
    "normalized_pac_conv2d",
    "PairwiseTerm",
    "TermParams",
    "make_term",
    "position_features",
    "yxrgb_features",
    "blur_pool",
    "blur_upsample",
    "crf_edge_kernels",
    "crf_message",
    "mean_field_step",
    "mean_field",
    "crf_output",
    "pac_crf",
    "fused_pac_conv2d",
    "fused_pac_conv_transpose2d",
    "fused_prob_pac_conv2d",
    "fused_normalized_pac_conv2d",
    "resize_bilinear",
    "max_pool_ceil",
]
