"""Window geometry shared by every PAC op: sizes, padding, zero insertion, tap slicing.

All arrays are NHWC. A "tap" is one offset ``(i, j)`` of a ``kh x kw`` window; for an output
position ``(y, x)`` it reads the padded input at ``(y * sh + i * dh, x * sw + j * dw)``.
This module is the only place that knows that formula.
"""

from __future__ import annotations

import itertools
import numbers
from typing import Iterator, NamedTuple, Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np
from jax import lax

from ppac_jax.ops.precision import matmul_precision

IntOrPair = Union[int, Sequence[int]]
Pair = Tuple[int, int]


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool (the ops' test of integer arguments)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_pair(value: IntOrPair, name: str) -> Pair:
    """Return ``value`` as a pair of Python ints, raising ``ValueError`` naming ``name``."""
    if is_int(value):
        return (int(value), int(value))
    # No int() of each item: it would read "12" as (1, 2) and truncate 1.5 to 1.
    try:
        items = () if isinstance(value, (str, bytes)) else tuple(value)  # type: ignore
    except TypeError:
        items = ()
    if len(items) != 2 or not all(is_int(v) for v in items):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return (int(items[0]), int(items[1]))


def check_kernel_size(kernel_size: IntOrPair, name: str = "kernel_size") -> Pair:
    """Validate a window size: positive and odd in both dimensions."""
    k = as_pair(kernel_size, name)
    if min(k) < 1 or k[0] % 2 == 0 or k[1] % 2 == 0:
        raise ValueError(f"{name} must be odd and positive in both dimensions, got {kernel_size!r}")
    return k


def check_positive(value: IntOrPair, name: str) -> Pair:
    v = as_pair(value, name)
    if min(v) < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return v


def check_non_negative(value: IntOrPair, name: str) -> Pair:
    v = as_pair(value, name)
    if min(v) < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def _check_steps(stride, padding, dilation, output_padding, transposed):
    """Validated ``(stride, padding, dilation, output_padding)`` pairs; a transposed op's
    ``output_padding`` must be smaller than ``stride`` or ``dilation`` (as in PyTorch)."""
    s, d = check_positive(stride, "stride"), check_positive(dilation, "dilation")
    p = check_non_negative(padding, "padding")
    op = check_non_negative(output_padding, "output_padding")
    if transposed and any(op[a] >= max(s[a], d[a]) for a in range(2)):
        raise ValueError(f"output_padding must be smaller than stride or dilation, got "
                         f"output_padding={op}, stride={s}, dilation={d}")
    return s, p, d, op


def check_rank(array, rank: int, name: str, layout: str) -> None:
    """Raise if ``array`` does not have ``rank`` dimensions (``layout`` names them)."""
    if getattr(array, "ndim", None) != rank:
        shape = getattr(array, "shape", None)
        raise ValueError(f"{name} must have rank {rank} ({layout}), got shape {shape}")


def conv_output_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a (PAC) convolution along one axis."""
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def transposed_output_size(size: int, k: int, stride: int, padding: int,
                           output_padding: int, dilation: int) -> int:
    """Output length of a transposed (PAC) convolution along one axis."""
    return (size - 1) * stride - 2 * padding + dilation * (k - 1) + 1 + output_padding


def transposed_input_size(size: int, k: int, stride: int, padding: int,
                          output_padding: int, dilation: int) -> int:
    """Input length of a transposed convolution whose output has length ``size``."""
    return (size - output_padding - 1 - (k - 1) * dilation + 2 * padding) // stride + 1


def transposed_geometry(spatial: Sequence[int], k: Pair, stride: IntOrPair, padding: IntOrPair,
                        output_padding: IntOrPair, dilation: IntOrPair):
    """Validated ``(stride, padding, output_padding, dilation, out_size)`` of a transposed conv.

    ``spatial`` is the low-resolution input's ``(h, w)``; ``output_padding`` must be smaller
    than ``stride`` or ``dilation`` (as in PyTorch).
    """
    s, p, d, op = _check_steps(stride, padding, dilation, output_padding, True)
    out = tuple(transposed_output_size(spatial[a], k[a], s[a], p[a], op[a], d[a])
                for a in range(2))
    if min(out) < 1:
        raise ValueError(f"x spatial size {tuple(spatial)} gives an empty output for "
                         f"kernel_size={k}, stride={s}, padding={p}")
    return s, p, op, d, out


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the size of a stride-1 window: ``(k // 2) * d``."""
    return (kernel_size // 2) * dilation


class Window(NamedTuple):
    """The window of one PAC op (hashable; build it with :func:`window`).

    A transposed op is the stride-1 convolution of its zero-inserted, padded input
    (:meth:`pad_input`); ``tap_stride`` is the stride of that convolution's taps.
    """
    kernel_size: Pair
    stride: Pair
    padding: Pair
    dilation: Pair
    output_padding: Pair
    transposed: bool
    in_size: Pair             # the op's input grid (the low-resolution one when transposed)
    out_size: Pair

    @property
    def tap_stride(self) -> Pair:
        return (1, 1) if self.transposed else self.stride

    @property
    def taps(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def centre(self) -> Pair:
        """The window's centre tap ``(i, j)``."""
        return (self.kernel_size[0] // 2, self.kernel_size[1] // 2)

    @property
    def centre_tap(self) -> int:
        """Row-major index of :attr:`centre`."""
        return self.centre[0] * self.kernel_size[1] + self.centre[1]

    @property
    def input_pads(self):
        """``[(low, high)] * 2`` padding of the input (of the zero-inserted input when
        transposed; negative values crop)."""
        if self.transposed:
            return [transposed_pads(self.kernel_size[a], self.padding[a],
                                    self.output_padding[a], self.dilation[a]) for a in range(2)]
        return [(self.padding[a],) * 2 for a in range(2)]

    @property
    def guide_pad(self) -> Pair:
        """Zero padding of a guide on the grid the taps read with ``tap_stride``: the op's
        padding, or, for a transposed op (guide on the output grid), "same" padding."""
        if self.transposed:
            return tuple((self.kernel_size[a] - 1) * self.dilation[a] // 2 for a in range(2))
        return self.padding

    @property
    def halo(self) -> int:
        """Extra input rows (in units of ``tap_stride``) that a strip of output rows reads."""
        return ((self.kernel_size[0] - 1) * self.dilation[0]) // self.tap_stride[0]

    def pad_input(self, x):
        """The (zero-inserted and) padded input ``[B, Hp, Wp, C]`` whose stride-``tap_stride``
        windows are the op's windows."""
        if self.transposed:
            return zero_insert_and_pad(x, self.stride, self.input_pads)
        return pad_spatial(x, self.input_pads)

    @property
    def centre_offset(self) -> Pair:
        """Position of output ``(0, 0)``'s window centre on the unpadded guide grid (output
        ``o`` has its centre at ``o * tap_stride + centre_offset``)."""
        return tuple(self.centre[a] * self.dilation[a] - self.guide_pad[a] for a in range(2))

    def centre_filter_pads(self, filter_size: Pair, guide_size: Pair):
        """``[(low, high)] * 2`` padding of an unpadded guide of ``guide_size`` after which a
        ``filter_size`` (odd) filter applied with ``tap_stride`` ("VALID") is centred on every
        window centre (negative values crop)."""
        pads = []
        for a in range(2):
            low = filter_size[a] // 2 - self.centre_offset[a]
            high = (self.out_size[a] - 1) * self.tap_stride[a] + filter_size[a] \
                - guide_size[a] - low
            pads.append((low, high))
        return pads

    def tap_slice(self, x_pad, tap: Pair):
        """:func:`tap_slice` of a padded input (or guide) with this window: ``[B, Ho, Wo, C]``."""
        return tap_slice(x_pad, tap, self.out_size, self.tap_stride, self.dilation)

    def pad_guide(self, guide):
        return pad_spatial(guide, [(p, p) for p in self.guide_pad])

    def tap_start(self, t):
        """``(phase_h, phase_w, row, col)`` of tap ``t`` (row-major; an int, or a traced int32
        ``>= 0``) in the :func:`phase_split` of the padded input: output ``(y, x)`` of tap
        ``(i, j)`` reads phase ``(i*dh mod sh, j*dw mod sw)`` at ``(y + i*dh div sh,
        x + j*dw div sw)``, the sample :meth:`tap_slice` reads.

        A traced ``t`` is split with C division and, at stride 1, gets constant phases: a few
        HLO ops per tap instead of ~40 for floor division (compile time, not run time)."""
        kw = self.kernel_size[1]
        if isinstance(t, int):
            tap = (t // kw, t % kw)
        else:
            tap = (lax.div(t, np.int32(kw)), lax.rem(t, np.int32(kw)))
        oi, oj = tap[0] * self.dilation[0], tap[1] * self.dilation[1]
        if self.tap_stride == (1, 1):
            zero = np.int32(0)
            return zero, zero, oi, oj
        sh, sw = self.tap_stride
        return oi % sh, oj % sw, oi // sh, oj // sw

    def strip(self, rows: int) -> "Window":
        """This window restricted to a strip of ``rows`` output rows."""
        return self._replace(out_size=(rows, self.out_size[1]))

    def strip_count(self, rows: int) -> int:
        return -(-self.out_size[0] // rows)


def window(size: Sequence[int], kernel_size: IntOrPair, *, stride: IntOrPair = 1,
           padding: IntOrPair = 0, dilation: IntOrPair = 1, output_padding: IntOrPair = 0,
           transposed: bool = False, output_grid: bool = False,
           kernel_name: str = "kernel_size", name: str = "x") -> Window:
    """Validated :class:`Window` of a PAC op whose input has spatial size ``size``.

    With ``output_grid`` (transposed ops only), ``size`` is the *output* size (a guide on the
    output grid) and the input size is derived; it must round-trip. ``output_padding`` is
    ignored unless ``transposed``. Raises ``ValueError`` naming the bad argument (``name``:
    the array whose size ``size`` is).
    """
    k = check_kernel_size(kernel_size, kernel_name)
    size = tuple(int(v) for v in size)
    if transposed and not output_grid:
        s, p, op, d, out = transposed_geometry(size, k, stride, padding, output_padding,
                                               dilation)
        return Window(k, s, p, d, op, True, size, out)
    s, p, d, op = _check_steps(stride, padding, dilation, output_padding, transposed)
    if not transposed:
        out = tuple(conv_output_size(size[a], k[a], s[a], p[a], d[a]) for a in range(2))
        if min(out) < 1:
            raise ValueError(f"{name} spatial size {size} is too small for kernel_size={k}, "
                             f"dilation={d}, padding={p}")
        return Window(k, s, p, d, (0, 0), False, size, out)
    in_size = tuple(transposed_input_size(size[a], k[a], s[a], p[a], op[a], d[a])
                    for a in range(2))
    expected = tuple(transposed_output_size(in_size[a], k[a], s[a], p[a], op[a], d[a])
                     for a in range(2))
    if min(in_size) < 1 or expected != size:
        raise ValueError(
            f"guide spatial size {size} is not the output size of a transposed convolution "
            f"with kernel_size={k}, stride={s}, padding={p}, output_padding={op}, "
            f"dilation={d}: (h_in - 1) * s - 2p + d * (k - 1) + 1 + output_padding")
    return Window(k, s, p, d, op, True, in_size, size)


def transposed_pads(k: int, padding: int, output_padding: int, dilation: int) -> Tuple[int, int]:
    """(low, high) padding applied to the zero-inserted input of a transposed convolution.

    Negative values crop (padding larger than ``(k - 1) * dilation``).
    """
    low = (k - 1) * dilation - padding
    return low, low + output_padding


def pad_spatial(x, pads: Sequence[Tuple[int, int]]):
    """Zero-pad (or crop, for negative pads) the two spatial axes of an NHWC array."""
    if all(p == (0, 0) for p in pads):
        return x
    zero = jnp.zeros((), x.dtype)
    return lax.pad(x, zero, [(0, 0, 0), (pads[0][0], pads[0][1], 0),
                             (pads[1][0], pads[1][1], 0), (0, 0, 0)])


def zero_insert_and_pad(x, stride: Pair, pads: Sequence[Tuple[int, int]]):
    """Insert ``stride - 1`` zeros between samples, then pad (or crop) each spatial axis.

    This is the input of the stride-1 convolution that a transposed convolution equals.
    x: ``[B, H, W, C]`` -> ``[B, (H-1)*sh + 1 + lo_h + hi_h, (W-1)*sw + 1 + lo_w + hi_w, C]``.
    """
    zero = jnp.zeros((), x.dtype)
    return lax.pad(x, zero, [(0, 0, 0), (pads[0][0], pads[0][1], stride[0] - 1),
                             (pads[1][0], pads[1][1], stride[1] - 1), (0, 0, 0)])


def tap_slice(x_pad, tap: Pair, out_size: Pair, stride: Pair, dilation: Pair):
    """The samples that tap ``(i, j)`` reads for every output position.

    x_pad: ``[B, Hp, Wp, C]`` (already padded) -> ``[B, Ho, Wo, C]``.
    """
    i, j = tap
    start = (0, i * dilation[0], j * dilation[1], 0)
    limit = (x_pad.shape[0], start[1] + (out_size[0] - 1) * stride[0] + 1,
             start[2] + (out_size[1] - 1) * stride[1] + 1, x_pad.shape[3])
    return lax.slice(x_pad, start, limit, (1, stride[0], stride[1], 1))


def taps(kernel_size: Pair) -> Iterator[Pair]:
    """All window offsets in row-major order (the order of the kernel's ``kh, kw`` axes)."""
    return itertools.product(range(kernel_size[0]), range(kernel_size[1]))


def extract_windows(x_pad, kernel_size: Pair, out_size: Pair, stride: Pair, dilation: Pair):
    """All windows of a padded input via ``lax.conv_general_dilated_patches``.

    x_pad: ``[B, Hp, Wp, C]`` -> ``[B, Ho, Wo, kh, kw, C]``. Exact (one-hot filters at HIGHEST
    precision), but holds ``kh * kw`` copies of the input.
    """
    b, _, _, c = x_pad.shape
    patches = lax.conv_general_dilated_patches(
        x_pad, kernel_size, stride, "VALID", rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=matmul_precision())
    patches = patches[:, :out_size[0], :out_size[1]]
    # The patch axis is ordered (C, kh, kw).
    patches = patches.reshape(b, out_size[0], out_size[1], c, kernel_size[0], kernel_size[1])
    return jnp.moveaxis(patches, 3, -1)


def phase_split(x, stride: Pair):
    """Split ``[B, H, W, C]`` into its stride phases: ``[sh, sw, B, ceil(H/sh), ceil(W/sw), C]``.

    Phase ``(p, q)`` holds ``x[:, p::sh, q::sw]`` (zero padded at the end to a common size), so
    a strided tap becomes a contiguous window of one phase (:meth:`Window.tap_start`).
    """
    sh, sw = stride
    b, h, w, c = x.shape
    hq, wq = -(-h // sh), -(-w // sw)
    x = pad_spatial(x, [(0, hq * sh - h), (0, wq * sw - w)])
    return x.reshape(b, hq, sh, wq, sw, c).transpose(2, 4, 0, 1, 3, 5)


def strip_start(strip, rows, total):
    """First row of row strip ``strip`` (traced) when ``total`` rows are cut into strips of
    ``rows`` rows: strip ``i`` starts at ``i * rows``, except that the last one is moved up to
    end at the last row (it then overlaps the strip before; see :func:`strip_fresh_rows`)."""
    return jnp.minimum(strip * rows, total - rows).astype(jnp.int32)


def strip_fresh_rows(strip, start, rows):
    """``[rows]`` bool: the rows of strip ``strip`` (starting at ``start``) that no earlier
    strip covers (all but the moved-up last strip's overlap)."""
    return start + jnp.arange(rows) >= strip * rows


def ring_taps() -> Tuple[Pair, ...]:
    """The 8 taps of a 3x3 window without its centre, row-major: the "eight corners" ring.

    Dilated by ``size`` they are the offsets ``(dy, dx)`` in ``{-size, 0, size}^2 \\ {(0, 0)}``
    used by the affinity field losses (Ke et al. ECCV 2018); tap ``k`` and tap ``7 - k`` are
    mirror images (``d_{7-k} = -d_k``).
    """
    return tuple(t for t in taps((3, 3)) if t != (1, 1))


def ring_neighbours(x, size: int, *, pad_value=0, mode: str = "constant"):
    """The 8 ring neighbours at distance ``size`` of every pixel.

    x: ``[B, H, W, C]`` -> ``[B, H, W, C, 8]`` with ``out[b, y, x, c, k] = x[b, y + dy_k,
    x + dx_k, c]``, ``d_k = (tap_k - 1) * size`` in :func:`ring_taps` order. Off-image
    neighbours read ``pad_value`` (``mode="constant"``) or the nearest border pixel
    (``mode="edge"``). The adjoint (gradient) adds back into ``x``; padding gets none.
    """
    if mode == "edge":
        x_pad = jnp.pad(x, [(0, 0), (size, size), (size, size), (0, 0)], mode="edge")
    elif mode == "constant":
        pad = jnp.asarray(pad_value, x.dtype)
        x_pad = lax.pad(x, pad, [(0, 0, 0), (size, size, 0), (size, size, 0), (0, 0, 0)])
    else:
        raise ValueError(f"mode must be 'constant' or 'edge', got {mode!r}")
    out_size = (x.shape[1], x.shape[2])
    return jnp.stack([tap_slice(x_pad, t, out_size, (1, 1), (size, size)) for t in ring_taps()],
                     axis=-1)
