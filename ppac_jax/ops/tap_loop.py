"""The loop-over-taps engine behind every windowed product of the ops.

One window sum ::

    U[b, o, :] = sum_t  K_t[b, o] * v_t[b, o] * (W_t applied to x_t[b, o, :])
    N[b, o]    = sum_t  K_t[b, o] * v_t[b, o]                  (only when asked for)

where ``x_t``, the guide samples ``g_t`` and the validity ``v_t`` are what tap ``t`` reads, and
``K_t`` is a slice of a precomputed kernel or is computed from ``g_t`` and the window centre
(the *fused* form). A ``lax.fori_loop`` walks over groups of taps and strips of output rows;
one custom VJP walks them again backward and recomputes every per-tap quantity, so neither the
``kh * kw`` shifted copies of the input nor the ``[B, Ho, Wo, kh, kw]`` kernel is ever held.

A step's contraction (:func:`_group_terms`) is *dense* (``W_t`` a ``C x O`` matrix: one matmul
over the group's taps and channels), *per-channel* (``W_t`` one scalar per channel, or one for
all) or *write the kernel out* (``Plan.kernel_out``: the result is ``K`` itself, tap-major,
:func:`window_kernel`); the custom VJP differentiates a step's terms with ``jax.vjp``.

Per-channel sums of large images run on *planes* (per-channel arrays without a channel axis,
:func:`_planes`): XLA CPU vectorises their elementwise work over the image width, where
channels-last arrays put a tiny channel axis innermost. Strided windows become contiguous
dynamic slices of the sources' stride phases (:func:`ppac_jax.ops.geometry.phase_split`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.tree_util import tree_map

from ppac_jax.ops import autodiff
from ppac_jax.ops import geometry as geo
from ppac_jax.ops.kernel import KernelSpec
from ppac_jax.ops.precision import matmul_precision
from ppac_jax.ops.tiling import Tiling


class Plan(NamedTuple):
    """Static description of one window sum (hashable: the custom VJP's non-diff argument)."""
    window: geo.Window        # sources have window.tap_stride phases; window.out_size outputs
    dense: bool               # weight [T, C, O]; otherwise per-channel [T, C or 1]
    fused: bool               # kernel computed from guide samples; otherwise given per tap
    kernel: KernelSpec = KernelSpec()   # fused: the kernel's formula
    with_sum: bool = False    # also return N = sum_t K_t v_t
    centre_tap: int = -1      # fused without a centre array: window.centre_tap (its guide)
    # fused gaussian: the centre array's last channel is a per-pixel shift m of the squared
    # distance, K_t = exp(-(d_t - m) / 2) (see window_min_distance)
    shifted: bool = False
    # from the Tiling (window_sum): output rows per strip (0: none), taps per step (0: one
    # window row) and of the backward pass (0: group), sources as tuples of per-channel planes
    rows: int = 0
    group: int = 0
    backward_group: int = 0
    planar: bool = False
    # ((top, bottom), (left, right)): the sources come unpadded (stride 1) and are zero padded
    # inside the custom VJP, whose backward accumulates their gradients unpadded
    pads: tuple = ()
    # the result is K itself, tap-major [T, B, Ho, Wo] (fused, planar, no input): window_kernel
    kernel_out: bool = False
    # precomputed kernels, channels-last: strips read their taps from the whole (padded) sources,
    # not from copies of their rows + halo (~halo / rows images per sum when widely dilated); a
    # [B, H, W, C] input (stride 1) is then saved by the custom VJP as is, not reshaped.
    direct: bool = False

    @property
    def out_axis(self) -> int:
        """The output rows' axis: 1 of ``[B, Ho, Wo(, C)]``, 2 of a written-out kernel."""
        return 2 if self.kernel_out else 1


def _planes(a):
    """``a`` split along its last (channel) axis into a tuple of planes (``None`` stays)."""
    if a is None:
        return None
    # Through one channels-first transpose: its gradient is one transpose back (slices of the
    # last axis had one slow strided scatter per channel).
    channels_first = jnp.moveaxis(a, -1, 0)
    return tuple(channels_first[i] for i in range(a.shape[-1]))


def window_sum(x_ph, ksrc, v_ph, centre, weight, params, plan: Plan, tiling: Tiling):
    """``(U, N)`` of the module docstring (``N`` is ``None`` unless ``plan.with_sum``).

    Args:
      x_ph: ``[sh, sw, B, Hq, Wq, C]`` phases (``geometry.phase_split``) of the padded input
        (unpadded with ``plan.pads``, as the guide and validity); with ``plan.direct`` also
        the input itself, ``[B, H, W, C]``.
      ksrc: fused: guide phases ``[sh, sw, B, Hq, Wq, D]``; otherwise the kernel tap-major,
        ``[T, B, Ho, Wo, 1 or C]``, or ``[T, B, Ho, Wo]`` for a dense product.
      v_ph: ``[sh, sw, B or 1, Hq, Wq, 1]`` validity phases, or ``None`` (all valid).
        Not differentiated.
      centre: ``[B, Ho, Wo, D]`` window-centre features (fused), else ``None``; with
        ``plan.centre_tap >= 0`` the centre is read from the guide phases in the loop instead
        (no centre-sized buffers, forward or backward).
      weight: ``[T, C, O]`` (dense) or ``[T, C or 1]``.
      params: ``()`` or ``(inv_alpha, inv_lambda)`` for ``kernel_type="inv"``.
      tiling: strips, taps per step and layout (:func:`ppac_jax.ops.tiling.choose_tiling`
        with ``op="sum"``); dense sums ignore ``tiling.planar``.

    Returns:
      ``U [B, Ho, Wo, O or C]`` and ``N [B, Ho, Wo, 1]`` or ``None``.
    """
    plan = plan._replace(rows=tiling.rows, group=tiling.group,
                         backward_group=tiling.backward_group)
    if plan.dense or not tiling.planar or plan.direct:
        return _strips(x_ph, ksrc, v_ph, centre, weight, params, plan._replace(planar=False))
    # Per-channel sums run on planes (see the module docstring); weights become [T, C or 1, 1].
    u, n = _strips(_planes(x_ph), _planes(ksrc), _planes(v_ph), _planes(centre),
                   weight[..., None], params, plan._replace(planar=True))
    return jnp.stack(u, axis=-1), (None if n is None else n[0][..., None])


def window_kernel(guide_ph, centre, params, plan: Plan, tiling: Tiling):
    """The adapting kernel of summed feature distances, tap-major: ``[T, B, Ho, Wo]``.

    The engine with the "write the kernel out" contraction: each step writes its taps' kernel
    values (the gaussian's exponent when ``plan.kernel.log_domain``) instead of summing them
    into a product. ``guide_ph``: padded guide phases ``[sh, sw, B, Hq, Wq, D]``; ``centre``
    as in :func:`window_sum`. Always planar; ``tiling.rows`` and ``tiling.group`` apply.
    """
    plan = plan._replace(fused=True, dense=False, with_sum=False, planar=True, kernel_out=True,
                         rows=tiling.rows, group=tiling.group)
    (kern,), _ = _strips(None, _planes(guide_ph), None, _planes(centre), None, params, plan)
    return kern


def _strips(x_ph, ksrc, v_ph, centre, weight, params, plan: Plan):
    """:func:`window_sum` in the plan's layout, output rows in strips of ``plan.rows``."""
    out_h = plan.window.out_size[0]
    if plan.rows == 0 or plan.rows >= out_h:
        return _window_sum(x_ph, ksrc, v_ph, centre, weight, params, plan._replace(rows=0))
    # Every strip has `rows` rows; the last one is moved up to end at the last output row
    # (geometry.strip_start), so no source, kernel or output is padded to a whole number of strips.
    if not plan.pads and not plan.direct:
        # Only stride phases can be shorter than the rows the strips read.
        need = out_h + plan.window.halo
        pad = lambda a: jnp.pad(a, [(0, 0)] * 3 + [(0, max(0, need - a.shape[3]))]
                                + [(0, 0)] * (a.ndim - 4))
        x_ph, v_ph = tree_map(pad, x_ph), tree_map(pad, v_ph)
        ksrc = tree_map(pad, ksrc) if plan.fused else ksrc
    return _window_sum(x_ph, ksrc, v_ph, centre, weight, params, plan)


def _rows(tree, axis, start, size):
    start = jnp.asarray(start, jnp.int32)
    return tree_map(lambda a: lax.dynamic_slice_in_dim(a, start, size, axis), tree)


def _rows_add(acc, update, axis, start, *, add=True):
    start = jnp.asarray(start, jnp.int32)

    def rows_add(a, u):
        if add:
            u = lax.dynamic_slice_in_dim(a, start, u.shape[axis], axis) + u
        return lax.dynamic_update_slice_in_dim(a, u, start, axis)
    return tree_map(rows_add, acc, update)


def _strip(x_ph, ksrc, v_ph, centre, start, plan: Plan):
    """``(sources, plan, row0)`` of output rows ``start .. start + plan.rows - 1``: copies of
    the source rows the strip reads (zero padded by ``plan.pads``) and ``row0 = 0``, or, with
    ``plan.direct``, the whole (padded) sources and ``row0 = start``; the kernel's and the
    centre's rows of the strip."""
    inner = plan._replace(window=plan.window.strip(plan.rows), rows=0, pads=(), direct=False)
    centre = _rows(centre, 1, start, plan.rows)
    if plan.direct:
        assert not plan.fused, "direct strips take a precomputed kernel"
        return (x_ph, _rows(ksrc, 2, start, plan.rows), v_ph, centre), inner, start
    span = plan.rows + plan.window.halo
    rows = functools.partial(_padded_rows, plan=plan) if plan.pads else _rows
    ks = rows(ksrc, 3, start, span) if plan.fused else _rows(ksrc, 2, start, plan.rows)
    return (rows(x_ph, 3, start, span), ks, rows(v_ph, 3, start, span), centre), inner, 0


def _row_pad(a, n):
    return jnp.pad(a, [(0, 0)] * 3 + [(n, n)] + [(0, 0)] * (a.ndim - 4))


def _padded_rows(tree, axis, start, size, *, plan: Plan):
    """Rows ``start .. start + size - 1`` (traced start) of the sources zero padded by
    ``plan.pads``, built from the unpadded sources ``[1, 1, B, H, W(, C)]`` without padding
    them whole: ``[1, 1, B, size, W + left + right(, C)]``."""
    assert axis == 3
    (top, _), (left, right) = plan.pads

    def rows(a):
        height = a.shape[3]
        off = start - top                      # image row of the strip's first row
        if size > height:
            strip = lax.dynamic_slice_in_dim(_row_pad(a, size), size + off, size, axis=3)
        else:
            # The in-image window of `size` rows that covers the strip, shifted into place
            # (rows outside the image read the zeros shifted in).
            first = jnp.clip(off, 0, height - size)
            window = lax.dynamic_slice_in_dim(a, first, size, axis=3)
            strip = lax.dynamic_slice_in_dim(_row_pad(window, size), size + off - first, size,
                                             axis=3)
        return jnp.pad(strip, [(0, 0)] * 4 + [(left, right)] + [(0, 0)] * (a.ndim - 5))
    return tree_map(rows, tree)


def _tap_index(t, plan: Plan, row0=0):
    """Start index of tap ``t`` (traced, >= 0) in a phase-split source whose row ``row0`` is
    the first output row's (``plan.direct`` strips)."""
    ph, pw, row, col = plan.window.tap_start(jnp.asarray(t, jnp.int32))
    zero = np.int32(0)
    index = (ph, pw, zero, row + row0, col, zero)
    return index[:5] if plan.planar else index     # planes have no channel axis


def _window(src, t, plan: Plan, row0=0):
    """Tap ``t``'s samples of a phase-split source: ``[B, Ho, Wo, C]`` (planes: ``[B, Ho, Wo]``)."""
    index = _tap_index(t, plan, row0)
    size = lambda a: (1, 1, a.shape[2], *plan.window.out_size, *a.shape[5:])
    return tree_map(lambda a: lax.dynamic_slice(a, index, size(a), allow_negative_indices=False)
                    [0, 0], src)


def _window_add(acc, update, t, plan: Plan, row0=0):
    """Adjoint of :func:`_window`, accumulated in place into ``acc``."""
    index = _tap_index(t, plan, row0)

    def add(a, u):
        current = lax.dynamic_slice(a, index, (1, 1, *u.shape), allow_negative_indices=False)
        return lax.dynamic_update_slice(a, current + u[None, None], index,
                                        allow_negative_indices=False)
    return tree_map(add, acc, update)


def _gather(x_ph, ksrc, v_ph, weight, t0, size, plan: Plan, row0=0):
    """Everything taps ``t0 .. t0 + size - 1`` read."""
    ts = [t0 + g for g in range(size)]
    xs = tuple(_window(x_ph, t, plan, row0) for t in ts)
    if plan.fused:
        ks = tuple(_window(ksrc, t, plan) for t in ts)
    else:
        block = _rows(ksrc, 0, t0, size)
        ks = tuple(tree_map(lambda a: a[g], block) for g in range(size))
    vs = None if v_ph is None else tuple(_window(v_ph, t, plan, row0) for t in ts)
    return xs, ks, vs, _rows(weight, 0, t0, size)


def _centre(ksrc, centre, plan: Plan):
    return _window(ksrc, plan.centre_tap, plan) if plan.centre_tap >= 0 else centre


def _group_terms(xs, ks, vs, centre, ws, params, plan: Plan):
    """Contribution of one group of taps to ``(U, N)``. ``xs[g]``, ``ks[g]`` (guide samples or
    kernel) and ``vs[g]`` are tap ``g``'s: channels-last arrays or, ``plan.planar``, tuples of
    planes; ``ws`` is ``[G, C, O]`` (dense), ``[G, C or 1]`` or, planar, ``[G, C or 1, 1]``.
    A channels-last per-channel sum is the planar one with a single plane of all channels."""
    add = lambda items: functools.reduce(jnp.add, items)
    planes = (lambda a: a) if plan.planar else (lambda a: (a,))
    if plan.fused:
        features, shift = centre, None
        if plan.shifted:       # the centre's last channel is the shift
            features, shift = ((centre[:-1], centre[-1]) if plan.planar
                               else (centre[..., :-1], centre[..., -1]))
        log = plan.kernel_out and plan.kernel.log_domain
        values = [plan.kernel.value(plan.kernel.distance(k, features, shift), params, log=log)
                  for k in ks]
        if plan.kernel_out:
            return (jnp.stack(values),), None
        kernels = [(v if plan.planar else v[..., None],) for v in values]
    else:
        # Planes: one kernel plane, or one per channel. A dense product's kernel may come
        # without a channel axis: its per-tap gradient then has the image width innermost (a
        # trailing axis of 1 made XLA CPU's updates scalar).
        kernels = [k if plan.planar else (k[..., None] if k.ndim < x.ndim else k,)
                   for k, x in zip(ks, xs)]
    if vs is not None:
        kernels = [tuple(k * planes(v)[0] for k in kern) for kern, v in zip(kernels, vs)]
    n = add([kern[0] for kern in kernels]) if plan.with_sum else None
    if plan.dense:
        lhs = jnp.concatenate([x * kern[0] for x, kern in zip(xs, kernels)], axis=-1)
        return jnp.matmul(lhs, ws.reshape(-1, ws.shape[-1]), precision=matmul_precision()), n
    w = ws if plan.planar else ws[:, None]
    xs = [planes(x) for x in xs]
    u = tuple(add([x[c] * kern[c % len(kern)] * w[g, c % w.shape[1]]
                   for g, (x, kern) in enumerate(zip(xs, kernels))]) for c in range(len(xs[0])))
    return (u, None if n is None else (n,)) if plan.planar else (u[0], n)


def window_min_distance(guide_ph, v_ph, centre, plan: Plan):
    """Smallest squared guide distance over the *counted* taps of every window: ``[B, Ho, Wo]``.

    ``guide_ph``: padded guide phases ``[sh, sw, B, Hq, Wq, D]``; ``v_ph``: phases
    ``[sh, sw, B or 1, Hq, Wq, 1]`` of a map that is > 0 where a tap counts, or ``None`` (all
    count); ``centre``: ``[B, Ho, Wo, D]``. 0 for a window where no tap counts.

    With ``plan.shifted`` the window sums use ``exp(-(d_t - m) / 2)``, this minimum ``m`` (a
    normalised gaussian does not change): the largest counted tap is 1, so float32 neither
    underflows the sum nor squares a tiny sum in the gradient. One extra loop over the guide's
    taps only (no input channels, no gradient).
    """
    plan = plan._replace(planar=False, rows=0)
    guide_ph, centre = lax.stop_gradient(guide_ph), lax.stop_gradient(centre)
    inf = jnp.asarray(jnp.inf, centre.dtype)

    def tap(t, low):
        dist = plan.kernel.distance(_window(guide_ph, t, plan), centre)
        if v_ph is not None:
            dist = jnp.where(_window(v_ph, t, plan)[..., 0] > 0, dist, inf)
        return jnp.minimum(low, dist)

    taps = plan.window.taps
    low = lax.fori_loop(0, taps, tap, jnp.full(centre.shape[:3], inf))
    return jnp.where(jnp.isinf(low), jnp.zeros((), low.dtype), low)


def _over_taps(step, plan: Plan, carry):
    """``carry = step(t0, size, carry)`` for every group of ``plan.group`` taps (0: one window
    row, dense products at most 3) and the remainder group.

    Returns ``(carry, zero)``: ``zero`` is an int32 0 that XLA cannot constant-fold (it comes
    out of the loop). Tap indices of the remainder group, and any other index that would be a
    compile-time constant, are offset by it: XLA CPU emits a dynamic-update-slice at constant
    indices as a scalar loop over the whole target with a bounds test per element, many times
    slower than the vectorised in-place update a traced index gets.
    """
    group = plan.group
    if group < 1:
        # Several taps per step amortise the per-step overhead and feed the dense product one
        # matmul over group * C channels; at most 3 keeps the step's temporaries (and so the
        # op's memory) independent of the kernel size.
        group = min(plan.window.kernel_size[1], 3) if plan.dense else plan.window.kernel_size[1]
    group = min(group, plan.window.taps)
    full, rest = divmod(plan.window.taps, group)

    def body(s, state):
        carry, _ = state
        return step(s * group, group, carry), jnp.minimum(s, 0).astype(jnp.int32)

    carry, zero = lax.fori_loop(0, full, body, (carry, jnp.zeros((), jnp.int32)))
    if rest:
        carry = step(full * group + zero, rest, carry)
    return carry, zero


def _zeros(tree):
    return tree_map(jnp.zeros_like, tree)


def _as_phases(x):
    """A ``plan.direct`` input given as ``[B, H, W, C]`` as its one stride phase."""
    return x[None, None] if getattr(x, "ndim", 6) == 4 else x


@autodiff.custom_vjp
def _window_sum(x_ph, ksrc, v_ph, centre, weight, params, plan: Plan):
    x_ph = _as_phases(x_ph)
    if not plan.rows:
        x_ph, ksrc, v_ph = _padded_sources(x_ph, ksrc, v_ph, plan)
        return _taps_forward(x_ph, ksrc, v_ph, centre, weight, params, plan._replace(pads=()))

    if plan.direct:
        x_ph, ksrc, v_ph = _padded_sources(x_ph, ksrc, v_ph, plan)

    def body(strip, carry):
        start = geo.strip_start(strip, plan.rows, plan.window.out_size[0])
        sources, inner, row0 = _strip(x_ph, ksrc, v_ph, centre, start, plan)
        du, dn = _taps_forward(*sources, weight, params, inner, row0)
        u, n = carry
        # Written, not added: the moved-up last strip rewrites its overlap with equal values.
        return (_rows_add(u, du, plan.out_axis, start, add=False),
                None if n is None else _rows_add(n, dn, 1, start, add=False))

    return lax.fori_loop(0, plan.window.strip_count(plan.rows), body,
                         _zero_outputs(x_ph, ksrc, weight, plan))


def _zero_outputs(x_ph, ksrc, weight, plan: Plan):
    """Zero ``(U, N)`` in the plan's layout (``N`` is ``None`` unless ``plan.with_sum``)."""
    if plan.kernel_out:
        return (jnp.zeros((plan.window.taps, ksrc[0].shape[2], *plan.window.out_size),
                          ksrc[0].dtype),), None
    if plan.planar:
        plane = jnp.zeros((x_ph[0].shape[2], *plan.window.out_size), x_ph[0].dtype)
        return tuple(plane for _ in x_ph), ((plane,) if plan.with_sum else None)
    batch, channels = x_ph.shape[2], x_ph.shape[5]
    out_channels = weight.shape[-1] if plan.dense else channels
    u0 = jnp.zeros((batch, *plan.window.out_size, out_channels), x_ph.dtype)
    n0 = jnp.zeros((batch, *plan.window.out_size, 1), x_ph.dtype) if plan.with_sum else None
    return u0, n0


def _taps_forward(x_ph, ksrc, v_ph, centre, weight, params, plan: Plan, row0=0):
    u0, n0 = _zero_outputs(x_ph, ksrc, weight, plan)

    def step(t0, size, carry):
        xs, ks, vs, ws = _gather(x_ph, ksrc, v_ph, weight, t0, size, plan, row0)
        c = _centre(ksrc, centre, plan)
        du, dn = _group_terms(xs, ks, vs, c, ws, params, plan)
        u, n = carry
        if plan.kernel_out:
            return _rows_add(u, du, 0, t0, add=False), None
        return tree_map(jnp.add, u, du), (None if dn is None else tree_map(jnp.add, n, dn))

    return _over_taps(step, plan, (u0, n0))[0]


def _padded_sources(x_ph, ksrc, v_ph, plan: Plan):
    """The sources zero padded by ``plan.pads`` (unchanged without)."""
    if not plan.pads:
        return x_ph, ksrc, v_ph
    pad = lambda a: jnp.pad(a, [(0, 0)] * 3 + list(plan.pads) + [(0, 0)] * (a.ndim - 5))
    return tree_map(pad, x_ph), (tree_map(pad, ksrc) if plan.fused else ksrc), tree_map(pad, v_ph)


def _unpadded_add(acc, local, row0, plan: Plan):
    """``acc += local`` where ``local`` holds rows ``row0 ..`` (traced) of ``acc`` zero padded by
    ``plan.pads``: the parts of ``local`` that fall into the padding are dropped.

    ``acc``: unpadded phase source ``[1, 1, B, H, W(, C)]``; ``local``: ``[1, 1, B, R, Wp(, C)]``
    with ``Wp = W + left + right``.
    """
    (top, _), (left, _) = plan.pads

    def add(a, loc):
        height, width, span = a.shape[3], a.shape[4], loc.shape[3]
        loc = lax.slice_in_dim(loc, left, left + width, axis=4)
        off = row0 - top                       # image row of the local buffer's first row
        if span > height:                      # a strip taller than the image: shift it whole
            return a + lax.dynamic_slice_in_dim(_row_pad(loc, height), height - off, height, 3)
        # Update the span rows of acc from dst = clip(off, 0, H - span), which hold every
        # in-image row of local; local is shifted by dst - off (zeros shifted in).
        dst = jnp.clip(off, 0, height - span)
        loc = lax.dynamic_slice_in_dim(_row_pad(loc, span), span + dst - off, span, axis=3)
        current = lax.dynamic_slice_in_dim(a, dst, span, axis=3)
        return lax.dynamic_update_slice_in_dim(a, current + loc, dst, axis=3)
    return tree_map(add, acc, local)


def _window_sum_fwd(x_ph, ksrc, v_ph, centre, weight, params, plan):
    out = _window_sum(x_ph, ksrc, v_ph, centre, weight, params, plan)
    return out, (x_ph, ksrc, v_ph, centre, weight, params)


def _window_sum_bwd(plan, residuals, cotangents):
    x_in, ksrc_in, v_in, centre, weight, params = residuals
    if getattr(x_in, "ndim", 6) == 4:
        dx, *grads = _window_sum_bwd(plan, (_as_phases(x_in), *residuals[1:]), cotangents)
        return (dx.reshape(x_in.shape), *grads)
    dv, dx0, dk0 = _zeros(v_in), _zeros(x_in), _zeros(ksrc_in)    # unpadded with plan.pads
    unpadded = bool(plan.pads)
    if not plan.rows:
        x_ph, ksrc, v_ph = _padded_sources(x_in, ksrc_in, v_in, plan)
        pads_plan, plan = plan, plan._replace(pads=())
        dx, dk, dc, dw, dp = _taps_backward(x_ph, ksrc, v_ph, centre, weight, params, plan,
                                            _step_cotangents(cotangents, plan))
        if unpadded:
            dx = _unpadded_add(dx0, dx, 0, pads_plan)
            dk = _unpadded_add(dk0, dk, 0, pads_plan) if plan.fused else dk
        return dx, dk, dv, dc, dw, dp

    if plan.direct:     # gradients of the whole padded sources, cropped at the end
        x_src, k_src, v_src = _padded_sources(x_in, ksrc_in, v_in, plan)
        dx0 = _zeros(x_src)
    else:
        x_src, k_src, v_src = x_in, ksrc_in, v_in

    def body(strip, carry):
        dx, dk, dc, dw, dp = carry
        start = geo.strip_start(strip, plan.rows, plan.window.out_size[0])
        sources, inner, row0 = _strip(x_src, k_src, v_src, centre, start, plan)
        cts = _step_cotangents(cotangents, plan, strip, start)
        if plan.direct:
            dx, gk, gc, gw, gp = _taps_backward(*sources, weight, params, inner, cts, row0, dx)
        else:
            gx, gk, gc, gw, gp = _taps_backward(*sources, weight, params, inner, cts)
            dx = _unpadded_add(dx, gx, start, plan) if unpadded else _rows_add(dx, gx, 3, start)
        if not plan.fused:
            dk = _rows_add(dk, gk, 2, start)
        else:
            dk = _unpadded_add(dk, gk, start, plan) if unpadded else _rows_add(dk, gk, 3, start)
        dc = _rows_add(dc, gc, 1, start)
        return dx, dk, dc, tree_map(jnp.add, dw, gw), tree_map(jnp.add, dp, gp)

    carry = (dx0, dk0, None if centre is None else _zeros(centre), _zeros(weight), _zeros(params))
    dx, dk, dc, dw, dp = lax.fori_loop(0, plan.window.strip_count(plan.rows), body, carry)
    if plan.direct and plan.pads:
        (top, _), (left, _) = plan.pads
        dx = tree_map(lambda a, x: lax.slice(a, (0, 0, 0, top, left, 0),
                                             (*a.shape[:3], top + x.shape[3], left + x.shape[4],
                                              a.shape[5])), dx, x_in)
    return dx, dk, dv, dc, dw, dp


def _step_cotangents(cotangents, plan: Plan, strip=None, start=0):
    """``(t0, size) -> `` the cotangents of one loop step: of strip ``strip``'s rows (from
    ``start``, the rows an earlier strip covered zeroed), or of the whole output without a
    strip. A sum's step gets the strip's cotangent; a written-out kernel's step only its taps'
    block, sliced straight from the full cotangent (no strip-sized copy of it)."""
    rows = plan.rows if strip is not None else plan.window.out_size[0]

    def fresh(ct):
        if strip is None:
            return ct
        keep = geo.strip_fresh_rows(strip, start, rows)
        at = lambda a: keep.reshape([-1 if i == plan.out_axis else 1 for i in range(a.ndim)])
        return tree_map(lambda a: jnp.where(at(a), a, jnp.zeros((), a.dtype)), ct)

    if plan.kernel_out:
        def block(a, t0, size):
            zero = jnp.zeros((), jnp.int32)
            index = (jnp.asarray(t0, jnp.int32), zero, jnp.asarray(start, jnp.int32), zero)
            return lax.dynamic_slice(a, index, (size, a.shape[1], rows, a.shape[3]))
        return lambda t0, size: (fresh(tree_map(lambda a: block(a, t0, size), cotangents[0])), None)
    cts = cotangents if strip is None else tuple(fresh(_rows(ct, 1, start, rows))
                                                 for ct in cotangents)
    return lambda t0, size: cts


def _taps_backward(x_ph, ksrc, v_ph, centre, weight, params, plan: Plan, step_cotangents,
                   row0=0, dx0=None):
    """Gradients ``(dx, dk, dc, dw, dp)`` of one loop over the taps; ``step_cotangents`` from
    :func:`_step_cotangents`; ``dx`` is added to ``dx0`` (default zeros) from source row
    ``row0`` on (``plan.direct`` strips)."""

    def step(t0, size, carry):
        dx, dk, dc, dw, dp = carry
        xs, ks, vs, ws = _gather(x_ph, ksrc, v_ph, weight, t0, size, plan, row0)
        terms = lambda xs, ks, c, ws, p: _group_terms(xs, ks, vs, c, ws, p, plan)
        _, vjp = jax.vjp(terms, xs, ks, _centre(ksrc, centre, plan), ws, params)
        gx, gk, gc, gw, gp = vjp(step_cotangents(t0, size))
        for g in range(size):
            dx = _window_add(dx, gx[g], t0 + g, plan, row0)
            if plan.fused:
                dk = _window_add(dk, gk[g], t0 + g, plan)
            else:
                # Tap by tap (XLA CPU does not vectorise a stacked update's concatenate);
                # each tap's rows are written once: no read of the current value.
                dk = _rows_add(dk, tree_map(lambda a: a[None], gk[g]), 0, t0 + g, add=False)
        dc = None if dc is None else tree_map(jnp.add, dc, gc)
        dw = _rows_add(dw, gw, 0, t0)
        dp = tree_map(jnp.add, dp, gp)
        return dx, dk, dc, dw, dp

    # With plan.centre_tap, dc is the gradient of the centre read from the guide: summed over
    # the taps in the output frame and added to the guide's gradient once, at the end.
    dc0 = _centre(ksrc, centre, plan)
    carry = (_zeros(x_ph) if dx0 is None else dx0, _zeros(ksrc),
             None if dc0 is None else _zeros(dc0), _zeros(weight), _zeros(params))
    plan = plan._replace(group=plan.backward_group or plan.group)
    (dx, dk, dc, dw, dp), zero = _over_taps(step, plan, carry)
    if plan.centre_tap >= 0:
        dk = _window_add(dk, dc, plan.centre_tap + zero, plan)
        dc = None
    return dx, dk, dc, dw, dp


_window_sum.defvjp(_window_sum_fwd, _window_sum_bwd)
