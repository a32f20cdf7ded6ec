"""PAC-CRF: mean-field inference with pixel-adaptive pairwise terms (pure functions, NHWC).

A PAC-CRF has a unary term (segmentation logits ``[B, H, W, C]``) and a list of pairwise terms.
Each term is described by a static :class:`PairwiseTerm` and holds parameters in a
:class:`TermParams`. One mean-field step is::

    Q = softmax(logQ)                       # over the label axis
    logQ = unary * unary_weight
    for every term i:
        Qb = blur_pool(Q, b_i)               # average pooling (if blur > 1)
        m = messenger_i(Qb, K_i)             # PAC of Q with the edge kernel K_i (or a plain conv)
        m = compat_i(m)                      # 1x1 conv for "2d" terms
        m = blur_upsample(m, b_i, (H, W))    # bilinear upsampling + crop (if blur > 1)
        logQ = logQ - pairwise_weight_i * m

The edge kernels ``K_i`` (:func:`crf_edge_kernels`) depend only on the edge features and are
computed once per inference, outside the mean-field loop; the loop is a ``lax.scan`` so compile
time does not grow with the number of steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ppac_jax.ops import geometry as geo
from ppac_jax.ops import tap_loop
from ppac_jax.ops.adapting_kernel import pac_kernel
from ppac_jax.ops.kernel import compute_dtype
from ppac_jax.ops.precision import matmul_precision
from ppac_jax.ops.resample import resize_axis
from ppac_jax.ops.tiling import choose_tiling

COMPAT_TYPES = ("na", "4d", "2d", "potts")
FINAL_OUTPUTS = ("log_Q", "softmax", "log_softmax")


class PairwiseTerm(NamedTuple):
    """Static description of one pairwise term.

    Attributes:
      kernel_size: odd window size ``k`` (window ``k x k``).
      dilation: window dilation ``d``; the padding is ``(k // 2) * d`` ("same" output size).
      blur: pooling factor ``b``; ``b > 1`` passes messages on a ``b`` times coarser grid.
      compat_type: ``"na"`` (plain convolution, no edge kernel), ``"4d"`` (full per-tap
        ``C x C`` weights), ``"2d"`` (one shared filter, then a learnable ``C x C`` 1x1
        compatibility) or ``"potts"`` (one shared filter, no compatibility).
      spatial_filter: for ``"2d"`` / ``"potts"``: a learnable shared filter; otherwise the
        fixed ``crf_pool`` filter (ones, centre 0). Ignored by ``"na"`` and ``"4d"``.
    """

    kernel_size: int
    dilation: int = 1
    blur: int = 1
    compat_type: str = "4d"
    spatial_filter: bool = True

    @property
    def padding(self) -> int:
        return geo.same_padding(self.kernel_size, self.dilation)

    @property
    def has_edge_kernel(self) -> bool:
        return self.compat_type != "na"

    @property
    def shared_filters(self) -> bool:
        return self.compat_type in ("2d", "potts")

    def messenger_shape(self, channels: int):
        """HWIO shape of the messenger weight."""
        k = self.kernel_size
        return (k, k, 1, 1) if self.shared_filters else (k, k, channels, channels)


class TermParams(NamedTuple):
    """Parameters of one pairwise term (a pytree).

    Attributes:
      messenger: HWIO weight, ``[k, k, C, C]`` (``"na"``, ``"4d"``) or ``[k, k, 1, 1]``
        (``"2d"``, ``"potts"``).
      weight: scalar pairwise weight (``potts`` terms store it already negated, as the original).
      compat: ``[C, C]`` (input, output) compatibility of ``"2d"`` terms, else ``None``.
    """

    messenger: Any
    weight: Any
    compat: Any = None


def make_term(kernel_size, *, dilation=1, blur=1, compat_type="4d",
              spatial_filter=True) -> PairwiseTerm:
    """Validated :class:`PairwiseTerm` (raises ``ValueError`` naming the bad argument)."""
    if not geo.is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive int, got {kernel_size!r}")
    for name, value in (("dilation", dilation), ("blur", blur)):
        if not geo.is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if compat_type not in COMPAT_TYPES:
        raise ValueError(f"compat_type must be one of {COMPAT_TYPES}, got {compat_type!r}")
    return PairwiseTerm(int(kernel_size), int(dilation), int(blur), compat_type,
                        bool(spatial_filter))


def position_features(shape, *, scales=None, batch: int = 1):
    """Pixel coordinates ``[y, x]`` divided by ``scales`` (the original ``create_position_feats``).

    Args:
      shape: ``(H, W)``.
      scales: ``None`` (no scaling), a number, a pair ``(sy, sx)``, or an array ``[2]``.
        Python numbers are applied as the float32 factor ``float32(1 / s)``, as the original.
      batch: leading batch size ``B``.

    Returns:
      ``[B, H, W, 2]``: channel 0 = row ``y``, channel 1 = column ``x`` (float32, or the
      promoted dtype of an array ``scales``).
    """
    try:
        height, width = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair (H, W), got {shape!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"shape must be positive, got {shape!r}")
    if int(batch) < 1:
        raise ValueError(f"batch must be >= 1, got {batch!r}")
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    pos = jnp.asarray(np.stack([yy, xx], axis=-1).astype(np.float32)[None])
    if scales is not None:
        pos = pos * _inverse_scales(scales, 2, "scales")
    return jnp.broadcast_to(pos, (int(batch), height, width, 2))


def yxrgb_features(image, *, yx_scale=None, rgb_scale=None, scales=None):
    """``[y/sy, x/sx, r/sr, g/sg, b/sb]`` edge features (the original ``create_YXRGB``).

    Args:
      image: ``[B, H, W, 3]`` (e.g. RGB in ``[0, 255]``).
      yx_scale, rgb_scale: numbers (or arrays ``[2]`` / ``[3]``) dividing the positions and the
        colours; python numbers act as ``float32(1 / s)`` like the original.
      scales: alternatively one array ``[5]`` = ``[sy, sx, sr, sg, sb]`` (differentiable);
        exclusive with ``yx_scale`` / ``rgb_scale``.

    Returns:
      ``[B, H, W, 5]`` in the promoted dtype of ``image`` (positions are float32).
    """
    geo.check_rank(image, 4, "image", "B, H, W, C")
    if scales is not None:
        if yx_scale is not None or rgb_scale is not None:
            raise ValueError("pass either scales or yx_scale/rgb_scale, not both")
        scales = jnp.asarray(scales)
        if scales.shape != (2 + image.shape[-1],):
            raise ValueError(f"scales must have shape ({2 + image.shape[-1]},) = [sy, sx, "
                             f"per-channel], got {scales.shape}")
        yx_scale, rgb_scale = scales[:2], scales[2:]
    elif yx_scale is None or rgb_scale is None:
        raise ValueError("yxrgb_features needs yx_scale and rgb_scale (or scales)")
    pos = position_features(image.shape[1:3], scales=yx_scale, batch=image.shape[0])
    colour = image * _inverse_scales(rgb_scale, image.shape[-1], "rgb_scale")
    dtype = jnp.result_type(pos, colour)
    return jnp.concatenate([pos.astype(dtype), colour.astype(dtype)], axis=-1)


def _inverse_scales(scales, n, name):
    if isinstance(scales, (int, float, np.integer, np.floating)) and not isinstance(scales, bool):
        return jnp.asarray(np.float32(1.0 / float(scales)))
    if isinstance(scales, (list, tuple)) and all(isinstance(s, (int, float)) for s in scales):
        if len(scales) != n:
            raise ValueError(f"{name} must be a number or have {n} entries, got {scales!r}")
        return jnp.asarray(np.array([1.0 / float(s) for s in scales], np.float32))
    scales = jnp.asarray(scales)
    if scales.shape not in ((), (n,)):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {scales.shape}")
    return 1 / scales


def blur_padding(size: int, blur: int) -> int:
    """Symmetric padding of the blur pooling along an axis of length ``size``."""
    return ((blur - size % blur) % blur + 1) // 2


def blur_size(size: int, blur: int) -> int:
    """Length of the pooled axis."""
    return (size + 2 * blur_padding(size, blur) - blur) // blur + 1


def blur_pool(x, blur: int):
    """Average pooling ``blur x blur``, stride ``blur``, symmetric ceil padding, padding excluded.

    Equals PyTorch ``avg_pool2d(x, b, stride=b, padding=((b - n % b) % b + 1) // 2,
    count_include_pad=False)`` per spatial axis of length ``n``.

    Args:
      x: ``[B, H, W, C]``.
      blur: positive int; 1 returns ``x``.

    Returns:
      ``[B, Hb, Wb, C]`` with ``Hb = blur_size(H, blur)``.
    """
    geo.check_rank(x, 4, "x", "B, H, W, C")
    if blur == 1:
        return x
    pads = [(0, 0)] + [(blur_padding(n, blur),) * 2 for n in x.shape[1:3]] + [(0, 0)]
    window = (1, blur, blur, 1)
    total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, window, window, pads)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = lax.reduce_window(ones, np.array(0, x.dtype), lax.add, window, window, pads)
    return total / count


def blur_upsample(x, blur: int, out_size):
    """Undo :func:`blur_pool`'s resolution change: bilinear upsampling by ``blur``
    (PyTorch ``interpolate(scale_factor=b, mode="bilinear", align_corners=False)``), then the
    crop ``[pad : pad + H, pad : pad + W]`` with the pooling's padding.

    Args:
      x: ``[B, Hb, Wb, C]`` on the pooled grid.
      blur: the pooling factor.
      out_size: ``(H, W)`` of the full-resolution grid.

    Returns:
      ``[B, H, W, C]``.
    """
    geo.check_rank(x, 4, "x", "B, Hb, Wb, C")
    if blur == 1:
        return x
    for a in range(2):
        expected = blur_size(out_size[a], blur)
        if x.shape[1 + a] != expected:
            raise ValueError(f"x spatial size {x.shape[1:3]} is not the blurred size of "
                             f"{tuple(out_size)} with blur={blur}")
        crop = (blur_padding(out_size[a], blur), out_size[a])
        x = resize_axis(x, 1 + a, x.shape[1 + a] * blur, crop=crop)
    return x


def _term_features(edge_features, terms):
    """Per-term edge features (``None`` for ``na`` terms), pooled by the term's blur."""
    shared = not isinstance(edge_features, (list, tuple))
    if not shared and len(edge_features) != len(terms):
        raise ValueError(f"edge_features list must have one entry per pairwise term "
                         f"({len(terms)}), got {len(edge_features)}")
    per_term = [edge_features] * len(terms) if shared else list(edge_features)
    pooled, result = {}, []
    for i, (term, feat) in enumerate(zip(terms, per_term)):
        if not term.has_edge_kernel:
            result.append(None)
            continue
        if feat is None:
            raise ValueError(f"edge_features[{i}] is None but pairwise term {i} "
                             f"({term.compat_type!r}) needs edge features")
        geo.check_rank(feat, 4, "edge_features" if shared else f"edge_features[{i}]",
                       "B, H, W, D")
        key = term.blur if shared else (i, term.blur)
        if key not in pooled:
            pooled[key] = blur_pool(feat, term.blur)
        result.append(pooled[key])
    return result


def crf_edge_kernels(edge_features, terms: Sequence[PairwiseTerm]):
    """Gaussian edge kernels of every pairwise term (compute once per inference).

    Args:
      edge_features: ``[B, H, W, D]`` shared by all terms, or a list with one ``[B, H, W, D_i]``
        entry per term (entries of ``na`` terms are ignored and may be ``None``).
      terms: the pairwise terms.

    Returns:
      list with, per term, ``[B, Hb, Wb, k, k]`` (``Hb, Wb``: the grid pooled by the term's
      blur) = ``pac_kernel(blur_pool(f, b), k, padding=(k//2)*d, dilation=d)``, or ``None``
      for ``na`` terms.
    """
    return [None if feat is None else pac_kernel(feat, term.kernel_size, padding=term.padding,
                                                 dilation=term.dilation)[0]
            for term, feat in zip(terms, _term_features(edge_features, terms))]


def crf_message(q, kernel, term: PairwiseTerm, params: TermParams):
    """Message of one pairwise term (before the pairwise weight), on the full grid.

    Args:
      q: ``[B, H, W, C]`` label distribution.
      kernel: ``[B, Hb, Wb, k, k]`` edge kernel of the term (``None`` for ``na``).
      term: the term's description.
      params: the term's parameters.

    Returns:
      ``[B, H, W, C]``.
    """
    return _message(q, _tap_major(kernel), term, params)


def _message(q, taps, term: PairwiseTerm, params: TermParams):
    """:func:`crf_message` with the edge kernel tap-major (:func:`_tap_major`)."""
    out_size = q.shape[1:3]
    qb = blur_pool(q, term.blur)
    if term.compat_type == "na":
        m = _plain_conv(qb, params.messenger, dilation=term.dilation)
    else:
        m = _tap_message(qb, taps, params.messenger, dilation=term.dilation,
                         shared_filters=term.shared_filters)
    if term.compat_type == "2d":
        m = jnp.einsum("bhwc,co->bhwo", m, params.compat.astype(m.dtype),
                       precision=matmul_precision())
    return blur_upsample(m, term.blur, out_size)


def _plain_conv(q, weight, *, dilation):
    """'same' convolution of ``q`` with an HWIO weight (the ``na`` messenger)."""
    pad = geo.same_padding(weight.shape[0], dilation)
    dtype = jnp.result_type(q, weight)
    return lax.conv_general_dilated(q.astype(dtype), weight.astype(dtype), (1, 1),
                                    [(pad, pad), (pad, pad)], rhs_dilation=(dilation, dilation),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    precision=matmul_precision())


def _tap_major(kernel):
    """``[B, H, W, k, k]`` -> the tap-loop engine's ``[k * k, B, H, W]``."""
    return None if kernel is None else jnp.moveaxis(
        kernel.reshape(*kernel.shape[:3], -1), 3, 0)


def _tap_message(q, taps, weight, *, dilation, shared_filters, tiling=None):
    """PAC of ``q`` with the edge kernel tap-major, ``[k * k, B, H, W]``, "same" size
    (``pac_conv2d(q, kernel, weight, padding=(k // 2) * dilation, dilation=dilation,
    shared_filters=...)``) on the tap-loop engine: strips of ``tiling.rows`` output rows
    (:func:`choose_tiling` with ``op="message"``), ``tiling.group`` taps per step (all ``k * k``:
    one GEMM ``[pixels, k*k*C] @ [k*k*C, O]`` per strip), taps read from the padded ``q``."""
    dtype = compute_dtype(q, taps, weight)
    out_dtype = jnp.result_type(q, taps, weight)
    batch, height, width, channels = q.shape
    k = weight.shape[0]
    if tiling is None:
        tiling = choose_tiling("message", batch=batch, out_size=(height, width),
                               kernel_size=weight.shape[:2])
    win = geo.window((height, width), k, padding=geo.same_padding(k, dilation),
                     dilation=dilation)
    plan = tap_loop.Plan(win, dense=not shared_filters, fused=False,
                         pads=tuple(tuple(p) for p in win.input_pads), direct=True)
    taps = taps.astype(dtype)
    if shared_filters:   # one scalar per tap
        taps, w = taps[..., None], weight.reshape(k * k, 1)
    else:
        w = weight.reshape(k * k, channels, -1)
    out, _ = tap_loop.window_sum(q.astype(dtype), taps, None, None,
                                 w.astype(dtype), (), plan, tiling._replace(planar=False))
    return out.astype(out_dtype)


def mean_field_step(log_q, unary, kernels, terms: Sequence[PairwiseTerm],
                    params: Sequence[TermParams], unary_weight=1.0):
    """One mean-field update.

    Args:
      log_q: ``[B, H, W, C]`` current (unnormalised) log marginals.
      unary: ``[B, H, W, C]`` unary logits.
      kernels: edge kernels from :func:`crf_edge_kernels`.
      terms, params: one :class:`PairwiseTerm` / :class:`TermParams` per pairwise term.
      unary_weight: scalar.

    Returns:
      ``[B, H, W, C]`` updated ``log_q``.
    """
    return _step(log_q, unary, [_tap_major(k) for k in kernels], terms, params, unary_weight)


def _step(log_q, unary, taps, terms, params, unary_weight):
    """:func:`mean_field_step` with the edge kernels tap-major (:func:`_tap_major`)."""
    q = jax.nn.softmax(log_q, axis=-1)
    out = unary * unary_weight
    for term, kern, p in zip(terms, taps, params):
        out = out - _message(q, kern, term, p) * p.weight
    return out


def mean_field(unary, kernels, terms: Sequence[PairwiseTerm], params, unary_weight=1.0, *,
               num_steps: int, log_q=None, untied: bool = False):
    """``num_steps`` mean-field updates as one ``lax.scan``.

    Args:
      unary: ``[B, H, W, C]``.
      kernels: edge kernels from :func:`crf_edge_kernels` (computed once, reused every step).
      terms: pairwise term descriptions.
      params: list of :class:`TermParams`; with ``untied=True`` every leaf has a leading
        ``[num_steps]`` axis (one set per step, as ``PacCRFLoose``).
      unary_weight: scalar, or ``[num_steps]`` when ``untied``.
      num_steps: number of updates (0 returns ``log_q``).
      log_q: initial ``[B, H, W, C]`` log marginals; default the unscaled ``unary``.

    Returns:
      ``[B, H, W, C]`` final ``log_q``.
    """
    _check_inputs(unary, kernels, terms, params, untied, num_steps, unary_weight)
    log_q = unary if log_q is None else log_q
    if log_q.shape != unary.shape:
        raise ValueError(f"log_q must have the unary's shape {unary.shape}, got {log_q.shape}")
    # half-precision inputs iterate in float32
    dtype = compute_dtype(unary, log_q, unary_weight, *jax.tree.leaves((kernels, params)))
    log_q = log_q.astype(dtype)
    if num_steps == 0:
        return log_q
    taps = [_tap_major(k) for k in kernels]   # once, outside the loop

    def body(carry, step):
        p, uw = step if untied else (params, unary_weight)
        return _step(carry, unary, taps, terms, p, uw).astype(dtype), None

    out, _ = lax.scan(body, log_q, (list(params), unary_weight) if untied else None,
                      length=num_steps)
    return out


def crf_output(log_q, *, final_output: str = "log_Q"):
    """``log_Q`` (unchanged), ``softmax`` or ``log_softmax`` over the label axis."""
    if final_output == "log_Q":
        return log_q
    if final_output == "softmax":
        return jax.nn.softmax(log_q, axis=-1)
    if final_output == "log_softmax":
        return jax.nn.log_softmax(log_q, axis=-1)
    raise ValueError(f"final_output must be one of {FINAL_OUTPUTS}, got {final_output!r}")


def pac_crf(unary, edge_features, terms: Sequence[PairwiseTerm], params, unary_weight=1.0, *,
            num_steps: int, final_output: str = "log_Q", log_q=None, edge_kernels=None,
            untied: bool = False):
    """Full PAC-CRF inference: edge kernels once, ``num_steps`` mean-field updates, output.

    Args:
      unary: ``[B, H, W, C]`` unary logits.
      edge_features: ``[B, H, W, D]`` shared by all terms, or a list with one entry per term
        (``na`` entries ignored); unused when ``edge_kernels`` is given.
      terms: list of :class:`PairwiseTerm`.
      params: list of :class:`TermParams` (leading ``[num_steps]`` axis if ``untied``).
      unary_weight: scalar (``[num_steps]`` if ``untied``).
      num_steps: mean-field iterations.
      final_output: ``"log_Q"``, ``"softmax"`` or ``"log_softmax"``.
      log_q: optional initial log marginals (default: ``unary``).
      edge_kernels: optional precomputed :func:`crf_edge_kernels`.
      untied: one parameter set per step.

    Returns:
      ``[B, H, W, C]``.
    """
    geo.check_rank(unary, 4, "unary", "B, H, W, C")
    if final_output not in FINAL_OUTPUTS:
        raise ValueError(f"final_output must be one of {FINAL_OUTPUTS}, got {final_output!r}")
    if edge_kernels is None:
        if edge_features is None and any(t.has_edge_kernel for t in terms):
            raise ValueError("edge_features is required (or pass edge_kernels)")
        edge_kernels = crf_edge_kernels(edge_features, terms) if edge_features is not None \
            else [None] * len(terms)
    log_q = mean_field(unary, edge_kernels, terms, params, unary_weight, num_steps=num_steps,
                       log_q=log_q, untied=untied)
    return crf_output(log_q, final_output=final_output)


def _check_inputs(unary, kernels, terms, params, untied, num_steps, unary_weight):
    geo.check_rank(unary, 4, "unary", "B, H, W, C")
    if not geo.is_int(num_steps) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
    if not (len(terms) == len(kernels) == len(params)):
        raise ValueError(f"terms ({len(terms)}), kernels ({len(kernels)}) and params "
                         f"({len(params)}) must have one entry per pairwise term")
    batch, height, width, channels = unary.shape
    lead = (num_steps,) if untied else ()
    if untied and tuple(jnp.shape(unary_weight)) != lead:
        raise ValueError(f"unary_weight must have shape {lead} (one per step) with "
                         f"untied=True, got {jnp.shape(unary_weight)}")
    for i, (term, kern, p) in enumerate(zip(terms, kernels, params)):
        expected = lead + term.messenger_shape(channels)
        if tuple(jnp.shape(p.messenger)) != expected:
            raise ValueError(f"params[{i}].messenger must have shape {expected} for a "
                             f"{term.compat_type!r} term with {channels} labels, got "
                             f"{jnp.shape(p.messenger)}")
        if term.compat_type == "2d" and tuple(jnp.shape(p.compat)) != lead + (channels, channels):
            raise ValueError(f"params[{i}].compat must have shape {lead + (channels, channels)}, "
                             f"got {jnp.shape(p.compat)}")
        if term.has_edge_kernel:
            k = term.kernel_size
            expected_k = (batch, blur_size(height, term.blur), blur_size(width, term.blur), k, k)
            if kern is None or tuple(kern.shape) != expected_k:
                raise ValueError(f"edge kernel {i} must have shape {expected_k}, got "
                                 f"{getattr(kern, 'shape', None)}")
