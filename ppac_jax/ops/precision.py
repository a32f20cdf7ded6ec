"""One float32 contraction precision for the whole library.

Every ``dot_general`` / ``einsum`` / matmul / convolution in ppac_jax passes
``precision=matmul_precision()``: ``lax.Precision.HIGHEST`` by default, so float32 contractions
are full float32 on every backend (the default is TF32 on NVIDIA GPUs from Ampere on and one
bfloat16 pass on TPUs: three to four digits lost there, and the golden tolerances would fail).
When the caller sets JAX's own ``jax.default_matmul_precision(...)`` (context manager, config
or ``JAX_DEFAULT_MATMUL_PRECISION``), it returns ``None`` and the caller's choice applies
(``"tensorfloat32"`` trades precision for speed).

One global rule rather than a ``precision=`` argument everywhere: it is JAX's standard
mechanism, reaches the contractions inside custom VJPs, loops and the CRF, and makes the
accurate choice the default. It costs nothing on CPUs; on GPUs with TF32 and on TPUs,
matmul-bound contractions run several times slower. The value is read at trace time and keys
``jax.jit``'s cache: a jitted op retraces when it changes.
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
