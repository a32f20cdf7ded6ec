"""How the loops of the ops walk an image: one explicit, hashable :class:`Tiling` per op call.

:func:`choose_tiling` is the one place that picks it, from the backend and the shapes; every op
chooses once at its top (unless given ``tiling=``: tests pass small strips, planes on tiny
images) and passes it down. The numbers below are CPU measurements, used on every backend.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from ppac_jax.ops.geometry import is_int


class Tiling(NamedTuple):
    """Static loop layout of one op.

    Attributes:
      planar: per-channel work on planes (one array per channel, no channel axis) instead of
        channels-last arrays (ignored by dense products).
      rows: output rows per strip (0: the whole output in one piece).
      group: taps per loop step (0: the op's default; see :func:`choose_tiling`).
      backward_group: taps per step of the engine's backward pass (0: ``group``).
    """
    planar: bool = False
    rows: int = 0
    group: int = 0
    backward_group: int = 0


# Below this many output pixels (B * Ho * Wo) the channels-last programs are as fast as the
# planar ones and compile in about half the time.
_PLANAR_MIN_PIXELS = 64 * 64
# Engine strips: one strip of the input (channels-last, channels padded to 8) is about this
# many bytes, or, on planes, one strip of all source planes (input and guide). Every strip
# runs every tap's few small XLA kernels, whose fixed cost dominates small strips; larger
# strips cost temporary memory (a strip's worth; planar ones gained nothing past this size).
_STRIP_BYTES = 1 << 19
_PLANAR_STRIP_BYTES = 1 << 20
# pac_kernel strips: one tap's guide window (all channels) is about this big (as the engine's
# strips: larger amortise each strip's fixed cost).
_KERNEL_STRIP_BYTES = 1 << 18
# CRF messages: output pixels per strip (the forward's GEMM operand is the strip's tap matrix
# [pixels, k*k*C]); 2048 measured faster than 1024 and 4096 in the paper configuration.
_MESSAGE_STRIP_PIXELS = 2048
# CRF messages unroll the window rows (one GEMM over all taps) up to this kernel size in the
# forward pass; the backward pass takes one window row a step (as fast, a third of the compile
# time).
_UNROLL_MAX_K = 7
# impl="auto" uses the patches product only while its window tensor stays this small (bytes).
_AUTO_PATCHES_MAX_BYTES = 1 << 20


def check_tiling(tiling):
    """``None``, or ``tiling`` as a :class:`Tiling` of a bool and non-negative Python ints;
    ``ValueError`` naming it otherwise (also for traced values: a tiling is static)."""
    if tiling is None:
        return None
    counts = tiling[1:] if isinstance(tiling, Tiling) else ()
    if not (isinstance(tiling, Tiling) and isinstance(tiling.planar, (bool, np.bool_))
            and all(is_int(v) and v >= 0 for v in counts)):
        raise ValueError(f"tiling must be None or a ppac_jax.ops.tiling.Tiling(planar: bool, "
                         f"rows, group, backward_group: ints >= 0), a static value (under "
                         f"jax.jit close over it or mark it static), got {tiling!r}")
    return Tiling(bool(tiling.planar), *(int(v) for v in counts))


def choose_tiling(op: str, *, batch: int, out_size: Sequence[int], kernel_size=(1, 1),
                  channels: int = 1, guide_channels: int = 0, itemsize: int = 4,
                  dense: bool = False, backend: Optional[str] = None) -> Tiling:
    """The default tiling of one op.

    Args:
      op: ``"sum"`` (the tap-loop engine, :func:`ppac_jax.ops.tap_loop.window_sum`),
        ``"kernel"`` (``pac_kernel``'s summed-distance kernel) or ``"message"`` (PAC-CRF
        messages, "same" size).
      batch, out_size: ``B`` and ``(Ho, Wo)`` of the op's output.
      kernel_size: ``(kh, kw)``.
      channels: input channels (``"sum"``, ``"kernel"``: the guide's ``D``).
      guide_channels: guide channels read inside the loop (fused sums), else 0.
      itemsize: bytes per element of the computation's dtype.
      dense: a dense ``Cin x Cout`` product (``"sum"``), or a channel-wise kernel (``"kernel"``).
      backend: ``jax.default_backend()`` when ``None`` (no backend-specific choice yet).
    """
    del backend  # every backend uses the CPU measurements for now
    out_h, out_w = out_size
    pixels = batch * out_h * out_w
    if op == "sum":
        planar = not dense and pixels >= _PLANAR_MIN_PIXELS
        if planar:
            rows = max(8, _PLANAR_STRIP_BYTES // ((channels + guide_channels) * batch * itemsize
                                                  * out_w))
        else:
            rows = max(8, _STRIP_BYTES // (batch * out_w * max(channels, 8) * itemsize))
        return Tiling(planar, 0 if rows * 2 > out_h else rows)
    if op == "kernel":
        planar = not dense and pixels >= _PLANAR_MIN_PIXELS
        rows = max(1, _KERNEL_STRIP_BYTES // (channels * batch * out_w * itemsize))
        return Tiling(planar, min(rows, out_h) if planar else 0, 1)
    if op == "message":
        k = kernel_size[0]
        rows = min(out_h, max(1, _MESSAGE_STRIP_PIXELS // max(1, batch * out_w)))
        return Tiling(False, rows, k * k if k <= _UNROLL_MAX_K else k, k)
    raise ValueError(f"op must be 'sum', 'kernel' or 'message', got {op!r}")


def choose_impl(x_shape, kernel_size, out_size, itemsize=4) -> str:
    """``"patches"`` for tiny windowed products, where it is cheapest, else ``"loop"``."""
    window_bytes = x_shape[0] * out_size[0] * out_size[1] * x_shape[-1] * kernel_size[0] \
        * kernel_size[1] * itemsize
    return "patches" if window_bytes <= _AUTO_PATCHES_MAX_BYTES else "loop"
