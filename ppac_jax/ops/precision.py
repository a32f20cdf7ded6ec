"""One float32 contraction precision for the whole library.

Every ``dot_general`` / ``einsum`` / matmul / ``conv_general_dilated`` inside ppac_jax passes
``precision=matmul_precision()``:

* by default that is ``lax.Precision.HIGHEST``: float32 contractions are computed in full
  float32 on every backend. Without it, JAX's backend default applies, which on NVIDIA GPUs
  from Ampere on is TF32 (10-bit mantissa, about 1e-3 relative error) and on TPUs one bfloat16
  pass, so the same PAC layer would silently lose three to four digits on those machines only
  and the golden tolerances would fail there;
* when the caller has set JAX's own switch, ``jax.default_matmul_precision(...)`` (context
  manager, ``jax.config.update("jax_default_matmul_precision", ...)`` or the
  ``JAX_DEFAULT_MATMUL_PRECISION`` environment variable), it returns ``None`` so the caller's
  choice applies unchanged: ``with jax.default_matmul_precision("tensorfloat32"):`` trades
  precision for speed.

Why one global rule rather than a ``precision=`` argument on every op and layer: it is JAX's
standard mechanism, it reaches the contractions inside custom VJPs, loops and the CRF without
threading an argument through every signature, and it makes the accurate choice the default.
The cost: on CPUs none (float32 contractions are always exact float32 there); on GPUs with
TF32 tensor cores, and on TPUs (HIGHEST = 6 bfloat16 passes), matmul-bound contractions run
several times slower than at the backend default. float64 and half-precision inputs are not
affected (half-precision inputs are computed in float32 by the ops).

The value is read when a function is traced; ``jax.jit`` keys its cache on
``jax_default_matmul_precision``, so a jitted op retraces when the caller changes it.
"""

from __future__ import annotations


import jax
from jax import lax

__all__ = ["matmul_precision"]


def matmul_precision() -> lax.Precision | None:
    """The ``precision=`` for a contraction in ppac_jax: ``HIGHEST``, or ``None`` (defer) when
    the caller set ``jax_default_matmul_precision``."""
    if jax.config.jax_default_matmul_precision is None:
        return lax.Precision.HIGHEST
    return None
