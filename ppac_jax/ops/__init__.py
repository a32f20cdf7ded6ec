"""Functional pixel-adaptive convolution ops (pure JAX, NHWC).

Everything else in ppac-jax is built from these functions.
"""

from ppac_jax.ops.fused import (fused_pac_conv2d, fused_pac_conv_transpose2d,
                                fused_prob_pac_conv2d)
from ppac_jax.ops.kernel import pac_kernel
from ppac_jax.ops.pac import pac_conv2d, pac_conv_transpose2d, pac_pool2d
from ppac_jax.ops.prob import normalized_pac_conv2d, prob_pac_conv2d

__all__ = [
    "pac_kernel",
    "pac_conv2d",
    "pac_conv_transpose2d",
    "pac_pool2d",
    "prob_pac_conv2d",
    "normalized_pac_conv2d",
    "fused_pac_conv2d",
    "fused_pac_conv_transpose2d",
    "fused_prob_pac_conv2d",
]
