"""Weight initialisers ("fillers") of the original PAC layers, as plain NumPy.

All weights are returned in ppac-jax layouts: HWIO ``[kh, kw, Cin, Cout]`` for convolutions and
transposed convolutions (``I`` = input channels of the layer), ``[kh, kw, 1, 1]`` with
``shared_filters``. Deterministic fillers return ``float32`` like the original; the random ones
take a ``dtype``.

Fillers of the original ``filler=`` option:

* ``"uniform"``: :func:`uniform_weight` (PyTorch's default conv init, weight and bias).
* ``"crf"``: :func:`crf_weight`; ``"crf_perturbed"``: :func:`crf_perturbed_weight`.
* ``"crf_pool"``: :func:`crf_pool_weight` (a fixed buffer in the original).
* ``"linear"``: :func:`linear_weight` (bilinear upsampling, transposed layers only).
* ``"pool"``: :func:`pool_weight`.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np

from ppac_jax.ops.geometry import check_positive

IntOrPair = Union[int, Sequence[int]]




def _positive(value: int, name: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def gaussian_2d(width: int, sigma: float | None = None) -> np.ndarray:
    """Normalised 2-D Gaussian ``[w, w]`` float32 (sigma = ``width / 4`` by default).

    Taps at offsets ``-(w//2) .. w//2`` (so an even ``width`` gives ``w + 1`` taps, as the
    original); the result sums to 1.
    """
    width = _positive(width, "width")
    sigma = width / 4.0 if sigma is None else float(sigma)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    r = np.arange(-(width // 2), width // 2 + 1, dtype=np.float64)
    g = np.exp(-0.5 * (r / sigma) ** 2)
    g2 = np.outer(g, g)
    return (g2 / g2.sum()).astype(np.float32)


def _crf_taps(kernel_size: IntOrPair) -> np.ndarray:
    kh, kw = check_positive(kernel_size, "kernel_size")
    if kh != kw or kh % 2 == 0:
        raise ValueError(f"the crf filler needs an odd square kernel_size, got {kernel_size!r}")
    g = gaussian_2d(kh) * np.float32(kh * kw)
    g[kh // 2, kw // 2] = 0
    return g


def crf_weight(in_channels: int, out_channels: int, kernel_size: IntOrPair,
               shared_filters: bool) -> np.ndarray:
    """The ``crf`` filler: mean-field message weights.

    ``G = gaussian_2d(k) * k * k`` with the centre tap set to 0; returns ``[k, k, 1, 1] = G``
    with ``shared_filters``, else ``[k, k, Cin, Cout]`` with ``W[:, :, i, o] = G * (i != o)``
    (no message from a label to itself).
    """
    in_channels = _positive(in_channels, "in_channels")
    out_channels = _positive(out_channels, "out_channels")
    g = _crf_taps(kernel_size)
    if shared_filters:
        return g[:, :, None, None].copy()
    off_diagonal = 1.0 - np.eye(in_channels, out_channels, dtype=np.float32)
    return (g[:, :, None, None] * off_diagonal[None, None]).astype(np.float32)


def crf_pool_weight(kernel_size: IntOrPair) -> np.ndarray:
    """The ``crf_pool`` filler: ``[kh, kw, 1, 1]`` ones with the centre tap 0 (a fixed buffer)."""
    kh, kw = check_positive(kernel_size, "kernel_size")
    w = np.ones((kh, kw, 1, 1), np.float32)
    w[kh // 2, kw // 2] = 0
    return w


def _linear_1d(k: int, s: int, normalize: bool) -> np.ndarray:
    pad = (k - (2 * s - 1)) // 2
    ramp = np.concatenate([np.arange(1, s), np.arange(s, 0, -1)]).astype(np.float64) / s
    taps = np.concatenate([np.zeros(max(pad, 0)), ramp, np.zeros(max(pad, 0))])
    if pad < 0 or taps.size != k:
        raise ValueError(f"the linear filler needs kernel_size = 2*stride - 1 + 2*n (n >= 0), got "
                         f"kernel_size {k} with stride {s}")
    if normalize:
        # with a normalised adapting kernel each tap is divided by the number of real
        # (non-inserted) samples in its window; pre-multiplying keeps a constant guide bilinear
        # wherever the window lies inside the input (not at the border: see linear_weight)
        j = np.arange(k)
        taps = taps * ((k - j - 1) // s + j // s + 1)
    return taps


def linear_weight(channels: int, kernel_size: IntOrPair, stride: IntOrPair,
                  normalize_kernel: bool = False, shared_filters: bool = False) -> np.ndarray:
    """The ``linear`` filler of transposed layers: bilinear upsampling by ``stride``.

    Separable; 1-D taps ``[0]*pad + [1, .., s-1, s, s-1, .., 1]/s + [0]*pad`` with
    ``pad = (k - (2s - 1)) // 2``, multiplied (if ``normalize_kernel``) by the number of real
    input samples each tap sees, ``(k - j - 1)//s + j//s + 1``. Returns ``[kh, kw, C, C]`` with
    the taps on the channel diagonal (each channel upsampled alone), or ``[kh, kw, 1, 1]`` with
    ``shared_filters``. float32. Reproduces the original's ``linear`` filler (golden tests).

    What a constant guide gives with these weights in ``PacConvTranspose2d``: without
    ``normalize_kernel``, plain bilinear upsampling (zero beyond the last input sample). With
    ``normalize_kernel=True`` the same values **only away from the border**: at an output pixel
    whose window reaches input positions outside the image, the normalisation counts fewer real
    samples than the pre-multiplication assumes, so the output is scaled up. For the common
    ``kernel_size = 2*stride + 1``, ``padding = stride``, ``output_padding = stride - 1``
    (e.g. 5, 2, 2, 1) the first output row and the first output column are 1.5x, and the
    top-left corner 2.25x, the bilinear value; the rows and columns from the last input
    sample on differ too. ``kernel_size = 2*stride - 1`` has no such border at the start. The
    original's filler behaves the same (``tests/nn/test_fillers.py`` pins these values).

    Raises:
      ValueError: unless ``kernel_size = 2*stride - 1 + 2n`` (n >= 0) per axis.
    """
    channels = _positive(channels, "channels")
    kh, kw = check_positive(kernel_size, "kernel_size")
    sh, sw = check_positive(stride, "stride")
    taps = np.outer(_linear_1d(kh, sh, normalize_kernel),
                    _linear_1d(kw, sw, normalize_kernel)).astype(np.float32)
    if shared_filters:
        return taps[:, :, None, None].copy()
    return (taps[:, :, None, None] * np.eye(channels, dtype=np.float32)[None, None])


def pool_weight(in_channels: int, out_channels: int, kernel_size: IntOrPair,
                shared_filters: bool) -> np.ndarray:
    """The ``pool`` filler: average pooling weights, ``1 / (kh * kw)`` per tap.

    Our reading of the original's ``pool`` filler: every tap gets the same constant so that
    with a constant adapting kernel the layer averages each channel over its window.
    ``[kh, kw, 1, 1]`` with ``shared_filters``; otherwise ``[kh, kw, C, C]`` on the channel
    diagonal, which needs ``in_channels == out_channels``.
    """
    kh, kw = check_positive(kernel_size, "kernel_size")
    value = np.float32(1.0 / (kh * kw))
    if shared_filters:
        return np.full((kh, kw, 1, 1), value, np.float32)
    in_channels = _positive(in_channels, "in_channels")
    out_channels = _positive(out_channels, "out_channels")
    if in_channels != out_channels:
        raise ValueError(f"the pool filler needs in_channels == out_channels, got "
                         f"{in_channels} and {out_channels}")
    return np.broadcast_to(np.eye(in_channels, dtype=np.float32) * value,
                           (kh, kw, in_channels, in_channels)).copy()


def uniform_bound(fan_in: int) -> float:
    """``1 / sqrt(fan_in)``: the half-width of the ``uniform`` filler (``fan_in = Cin*kh*kw``)."""
    return 1.0 / math.sqrt(_positive(fan_in, "fan_in"))


def uniform_weight(rng, shape: Sequence[int], fan_in: int | None = None, dtype=np.float32):
    """The ``uniform`` filler: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` of ``shape``.

    PyTorch's conv initialisation as the original uses it, for weights and biases alike
    (``fan_in = in_channels * kh * kw`` of the layer, also with ``shared_filters``).

    Args:
      rng: a ``numpy.random.Generator``, an int seed, or a JAX PRNG key (then the result is a
        JAX array drawn with ``jax.random.uniform``).
      shape: output shape, e.g. HWIO ``[kh, kw, Cin, Cout]`` or ``[Cout]`` for a bias.
      fan_in: see above; default ``kh * kw * Cin`` of a 4-D HWIO ``shape`` (pass it explicitly
        for biases and for shared ``[kh, kw, 1, 1]`` filters).
      dtype: result dtype.
    """
    shape = tuple(int(s) for s in shape)
    if fan_in is None:
        if len(shape) != 4:
            raise ValueError(f"fan_in is required unless shape is HWIO (4-D), got shape {shape}")
        fan_in = shape[0] * shape[1] * shape[2]
    bound = uniform_bound(fan_in)
    if isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(int(rng))
    if isinstance(rng, np.random.Generator):
        return rng.uniform(-bound, bound, size=shape).astype(dtype)
    import jax  # only when given a JAX key

    return jax.random.uniform(rng, shape, dtype=dtype, minval=-bound, maxval=bound)


def crf_perturbed_weight(rng, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                         shared_filters: bool, scale: float = 0.1, dtype=np.float32):
    """The ``crf_perturbed`` filler: :func:`crf_weight` plus small uniform noise.

    Our choice (the golden files pin only the deterministic fillers): the noise is
    ``scale * U(-b, b)`` with ``b = 1/sqrt(Cin*kh*kw)`` (the ``uniform`` filler's bound), added
    to every tap, the zero centre and diagonal included, so that training can break the
    symmetry of the CRF initialisation. ``rng`` as in :func:`uniform_weight`.
    """
    base = crf_weight(in_channels, out_channels, kernel_size, shared_filters)
    kh, kw = base.shape[:2]
    noise = uniform_weight(rng, base.shape, in_channels * kh * kw, dtype=dtype)
    return base.astype(dtype) + scale * noise


def upsampling_weight(in_channels: int, out_channels: int, kernel_size: int) -> np.ndarray:
    """Bilinear initialisation of FCN-8s' transposed convolutions (fcn8s ``get_upsampling_weight``).

    ``F = (k + 1) // 2``, centre ``c = F - 1`` (odd ``k``) or ``F - 0.5`` (even ``k``),
    ``filt[a, b] = (1 - |a - c| / F) * (1 - |b - c| / F)``, placed on the channel diagonal
    (``weight[:, :, i, i] = filt`` for ``i < min(in, out)``), zero elsewhere.

    Returns:
      ``[k, k, in_channels, out_channels]`` float32 (HWIO; the original's ``[in, out, k, k]``).
    """
    in_channels = _positive(in_channels, "in_channels")
    out_channels = _positive(out_channels, "out_channels")
    k = _positive(kernel_size, "kernel_size")
    factor = (k + 1) // 2
    centre = factor - 1 if k % 2 == 1 else factor - 0.5
    r = np.arange(k, dtype=np.float64)
    taps = 1 - np.abs(r - centre) / factor
    filt = np.outer(taps, taps)
    weight = np.zeros((k, k, in_channels, out_channels), np.float64)
    n = min(in_channels, out_channels)
    weight[:, :, np.arange(n), np.arange(n)] = filt[:, :, None]
    return weight.astype(np.float32)


__all__ = [
    "upsampling_weight",
    "gaussian_2d",
    "crf_weight",
    "crf_pool_weight",
    "crf_perturbed_weight",
    "crf_perturbed",
    "linear_weight",
    "pool_weight",
    "pool",
    "uniform_bound",
    "uniform_weight",
]

# short aliases named after the original's filler strings
crf_perturbed = crf_perturbed_weight
pool = pool_weight
