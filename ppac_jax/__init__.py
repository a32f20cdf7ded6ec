"""ppac-jax: pixel-adaptive convolution (PAC, PPAC, AAF) in JAX."""

from ppac_jax import ops

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]
