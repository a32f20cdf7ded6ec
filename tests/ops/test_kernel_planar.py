"""The planar tap-loop path of ``ops.pac_kernel`` against the straightforward formula.

The reference builds every tap with ``geometry.tap_slice`` on the channels-last guide and lets
autodiff do the backward pass (the original implementation; ``pac_kernel`` with a channels-last
``Tiling``). Both run through the same ``pac_kernel`` (validation, mask and normalisation are
shared), so this checks exactly the planar core and its custom VJP: outputs and gradients for guide, smooth_kernel, inv_alpha and
inv_lambda, in float64, over a seeded sweep of geometries and options.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppac_jax import ops
from ppac_jax.ops import adapting_kernel
from ppac_jax.ops import geometry as geo
from ppac_jax.ops import kernel as kernel_mod
from ppac_jax.ops.tiling import Tiling


def _reference_kernel(guide, pads, k, out_size, stride, d, guide_pad, smooth_kernel,
                      kernel_type, asym, alpha, lam):
    padded = geo.pad_spatial(guide, pads)
    win = geo.Window(k, stride, guide_pad, d, (0, 0), False, guide.shape[1:3], out_size)
    centre = adapting_kernel.centre_features(guide, padded, win, smooth_kernel)
    dist = jnp.stack([kernel_mod.tap_distance(geo.tap_slice(padded, tap, out_size, stride, d),
                                              centre, asym=asym)
                      for tap in geo.taps(k)], axis=3)
    dist = dist.reshape(guide.shape[0], *out_size, k[0], k[1])
    return kernel_mod.kernel_from_distance(dist, kernel_type, alpha, lam)


# (kernel_size, stride, padding, dilation, output_padding, transposed, input size)
GEOMETRIES = [
    ((3, 3), 1, 1, 1, 0, False, (13, 9)),
    ((5, 3), (2, 1), (2, 0), (1, 2), 0, False, (14, 11)),
    ((3, 3), 3, 0, 2, 0, False, (16, 12)),
    ((5, 5), 2, 2, 1, 1, True, (6, 5)),
    ((3, 5), (2, 3), (1, 2), (2, 1), (1, 2), True, (5, 4)),
]


def _cases():
    rng = np.random.default_rng(1234)
    cases = []
    for i, geometry in enumerate(GEOMETRIES):
        cases.append(dict(
            geometry=geometry,
            kernel_type=["gaussian", "inv"][(i + rng.integers(2)) % 2],
            asym=bool(rng.integers(2)),
            smooth=bool(rng.integers(2)),
            mask=bool(i % 2 == 1),
            normalize=bool(i % 3 == 2),
            group=i % 2,            # one tap a step (the default tiling) or one window row
            seed=int(rng.integers(1 << 30))))
    return cases


@functools.lru_cache(maxsize=None)
def _runner(static, rows, group=0):
    """Jitted ``(guide, smooth, alpha, lam, mask, cot) -> (kernel, grads)`` for one case:
    planar in strips of ``rows`` rows and ``group`` taps a step, or (``rows=0``) the
    channels-last reference."""
    k, s, p, d, op, transposed, kernel_type, asym, use_smooth, use_mask, normalize = static
    tiling = Tiling(planar=True, rows=rows, group=group) if rows else Tiling(planar=False)

    def f(guide, smooth, alpha, lam, mask):
        kern, out_mask = ops.pac_kernel(
            guide, k, stride=s, padding=p, dilation=d, output_padding=op,
            transposed=transposed, kernel_type=kernel_type, asym=asym,
            inv_alpha=alpha if kernel_type == "inv" else None,
            inv_lambda=lam if kernel_type == "inv" else None,
            smooth_kernel=smooth if use_smooth else None,
            normalize=normalize, mask=mask if use_mask else None, tiling=tiling)
        return kern, out_mask

    @jax.jit
    def run(guide, smooth, alpha, lam, mask, cot):
        (kern, out_mask), vjp = jax.vjp(lambda *a: f(*a, mask), guide, smooth, alpha, lam)
        cot_mask = None if out_mask is None else jnp.ones_like(out_mask)
        return kern, out_mask, vjp((cot, cot_mask))

    return run


@pytest.mark.parametrize("case", _cases(), ids=lambda c: (
    f"{c['geometry'][0]}-s{c['geometry'][1]}-{'T' if c['geometry'][5] else 'C'}-"
    f"{c['kernel_type']}{'-asym' if c['asym'] else ''}{'-smooth' if c['smooth'] else ''}"
    f"{'-mask' if c['mask'] else ''}{'-norm' if c['normalize'] else ''}"))
def test_planar_kernel_matches_reference(case):
    k, s, p, d, op, transposed, in_size = case["geometry"]
    kp, sp, pp, dp, opp = (geo.as_pair(v, "") for v in (k, s, p, d, op))
    if transposed:
        size = tuple(geo.transposed_output_size(in_size[a], kp[a], sp[a], pp[a], opp[a], dp[a])
                     for a in range(2))
    else:
        size = in_size
    keys = jax.random.split(jax.random.PRNGKey(case["seed"]), 4)
    guide = jax.random.normal(keys[0], (2, *size, 3), jnp.float64)
    smooth = jax.random.uniform(keys[1], (3, 3), jnp.float64)
    mask = (jax.random.uniform(keys[2], (2, *in_size, 1)) > 0.3).astype(jnp.float64)
    alpha, lam = jnp.asarray(0.2, jnp.float64), jnp.asarray(-0.6, jnp.float64)
    static = (kp, sp, pp, dp, opp, transposed, case["kernel_type"], case["asym"],
              case["smooth"], case["mask"], case["normalize"])
    shape = jax.eval_shape(lambda g: ops.pac_kernel(
        g, kp, stride=sp, padding=pp, dilation=dp, output_padding=opp,
        transposed=transposed)[0], guide).shape
    cot = jax.random.normal(keys[3], shape, jnp.float64)

    # A few output rows per strip, so that several strips and the moved-up last one are used.
    rows = max(1, 1500 // (3 * 2 * shape[2] * 8))
    got = _runner(static, rows, case["group"])(guide, smooth, alpha, lam, mask, cot)
    want = _runner(static, 0)(guide, smooth, alpha, lam, mask, cot)
    names = ["kernel", "output_mask", "d_guide", "d_smooth_kernel", "d_inv_alpha", "d_inv_lambda"]
    flat_got = [got[0], got[1], *got[2]]
    flat_want = [want[0], want[1], *want[2]]
    for name, a, b in zip(names, flat_got, flat_want):
        if b is None:
            assert a is None, name
            continue
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    assert np.all(np.isfinite(np.asarray(got[2][0])))


def test_strip_rows_cover_image():
    """Strips of 3 rows over 7 rows: the last strip is moved up to rows 4..6."""
    guide = jax.random.normal(jax.random.PRNGKey(0), (1, 7, 8, 3), jnp.float64)
    ref = _reference_kernel(guide, [(1, 1), (1, 1)], (3, 3), (7, 8), (1, 1), (1, 1), (1, 1),
                            None, "gaussian", False, None, None)
    got, _ = ops.pac_kernel(guide, 3, padding=1, tiling=Tiling(planar=True, rows=3))
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_strip_starts_cover_every_row_once():
    """geometry.strip_start / strip_fresh_rows: strips of 3 over 7 rows start at 0, 3, 4 and
    the fresh rows of all strips cover each row exactly once."""
    starts = [int(geo.strip_start(s, 3, 7)) for s in range(3)]
    assert starts == [0, 3, 4]
    counts = np.zeros(7, int)
    for s, start in enumerate(starts):
        fresh = np.asarray(geo.strip_fresh_rows(s, start, 3))
        counts[start:start + 3] += fresh
    assert counts.tolist() == [1] * 7
