"""Memory regression of the fused PAC conv: XLA's compiled memory analysis (deterministic; no
execution), forward + backward at 512x512, must not grow with the kernel size and stays
below one input-sized buffer."""

import jax
import jax.numpy as jnp

from ppac_jax import ops

SIZE, CHANNELS, GUIDE = 512, 16, 8


def _temp_bytes(k):
    f32 = jnp.float32
    x = jax.ShapeDtypeStruct((1, SIZE, SIZE, CHANNELS), f32)
    guide = jax.ShapeDtypeStruct((1, SIZE, SIZE, GUIDE), f32)
    weight = jax.ShapeDtypeStruct((k, k, CHANNELS, CHANNELS), f32)

    cot = jax.ShapeDtypeStruct((1, SIZE, SIZE, CHANNELS), f32)

    def fwd_bwd(x, guide, weight, cot):
        y, vjp = jax.vjp(lambda *a: ops.fused_pac_conv2d(*a, padding=k // 2), x, guide, weight)
        return y, vjp(cot)

    analysis = jax.jit(fwd_bwd).lower(x, guide, weight, cot).compile().memory_analysis()
    if analysis is None:  # pragma: no cover - backend without memory analysis
        import pytest
        pytest.skip("this backend reports no compiled memory analysis")
    return analysis.temp_size_in_bytes


def test_fused_memory_flat_in_kernel_size():
    small, large = _temp_bytes(3), _temp_bytes(9)
    assert small > 0
    assert large <= 1.2 * small, (small, large)
    # Strip-sized work only: the loop pads each strip itself and accumulates the gradients
    # unpadded, so not even one input-sized temporary is needed.
    assert large <= SIZE * SIZE * CHANNELS * 4, large
