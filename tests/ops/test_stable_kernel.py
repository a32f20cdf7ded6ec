"""Normalised kernels are computed stably: float32 gradients stay finite and close to float64
where the raw window sum of the kernel is below 1e-30 (issue 12, item 5).

The cases are joint-bilateral ones whose guide is colour plus finely scaled pixel coordinates,
so that most windows' taps are far from their centre in guide space: a transposed kernel (x2
upsampling), a convolution over sparse valid samples, and PPAC over sparse confidences (whose
ratio needs no shift: its 1e-20 floor and ratio-form derivative keep it finite).
(The x8, 17x17 case of the issue behaves the same; it takes minutes to compile, so it is not
run here.)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppac_jax import ops

S, K, P, OP = 2, 5, 2, 1          # x2 upsampling, 5x5 window (small: compile time)
LOW, HIGH = 4, 8                  # input and output sizes of the transposed op
COORD_SCALE = 12.0
REL_TOL = 1e-3                    # max |g32 - g64| / max |g64|; measured ~1e-6


def _guide(size, dtype):
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    colour = rng.uniform(0, 1, (1, size, size, 3))
    return jnp.asarray(np.concatenate([colour, COORD_SCALE * np.stack([yy, xx], -1)[None]], -1),
                       dtype)


def _rand(seed, shape, dtype):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), dtype)


def _sparse(size, dtype):
    """Valid / confident samples on a lattice of step S (sparse depth or flow)."""
    m = np.zeros((1, size, size, 1))
    m[:, ::S, ::S] = 1
    return jnp.asarray(m, dtype)


_T = dict(stride=S, padding=P, output_padding=OP)


def _transposed_kernel_loss(g, r):
    return jnp.sum(ops.pac_kernel(g, K, transposed=True, normalize=True, **_T)[0] * r)


def _transposed_channel_wise_loss(g, r):
    kern = ops.pac_kernel(g, K, transposed=True, normalize=True, channel_wise=True, **_T)[0]
    return jnp.sum(kern * r[..., None])


def _fused_transposed_loss(g, x, w, r):
    return jnp.sum(ops.fused_pac_conv_transpose2d(x, g, w, normalize=True, **_T) * r)


def _sparse_kernel_loss(g, m, r):
    return jnp.sum(ops.pac_kernel(g, K, padding=P, normalize=True, mask=m)[0] * r)


def _fused_sparse_loss(g, x, w, m, r):
    y, _ = ops.fused_pac_conv2d(x, g, w, padding=P, normalize=True, mask=m)
    return jnp.sum(y * r)


def _fused_ppac_loss(g, x, c, w, wn, r, shared):
    return jnp.sum(ops.fused_prob_pac_conv2d(x, c, g, w, wn, padding=P, shared_filters=shared) * r)


def _inputs(name, dtype):
    if name == "pac_kernel_transposed":
        return _transposed_kernel_loss, (_guide(HIGH, dtype), _rand(1, (1, HIGH, HIGH, K, K), dtype))
    if name == "pac_kernel_transposed_channel_wise":
        return _transposed_channel_wise_loss, (_guide(HIGH, dtype),
                                               _rand(1, (1, HIGH, HIGH, K, K), dtype))
    if name == "fused_pac_conv_transpose2d":
        return _fused_transposed_loss, (_guide(HIGH, dtype), _rand(2, (1, LOW, LOW, 2), dtype),
                                        _rand(3, (K, K, 2, 2), dtype),
                                        _rand(4, (1, HIGH, HIGH, 2), dtype))
    if name == "pac_kernel_sparse_mask":
        return _sparse_kernel_loss, (_guide(HIGH, dtype), _sparse(HIGH, dtype),
                                     _rand(1, (1, HIGH, HIGH, K, K), dtype))
    if name == "fused_pac_conv2d_sparse_mask":
        return _fused_sparse_loss, (_guide(HIGH, dtype), _rand(2, (1, HIGH, HIGH, 2), dtype),
                                    _rand(3, (K, K, 2, 2), dtype), _sparse(HIGH, dtype),
                                    _rand(4, (1, HIGH, HIGH, 2), dtype))
    shared = name.endswith("shared")
    wshape = (K, K, 1, 1) if shared else (K, K, 2, 2)
    loss = functools.partial(_fused_ppac_loss, shared=shared)
    return loss, (_guide(HIGH, dtype), _rand(2, (1, HIGH, HIGH, 2), dtype),
                  _sparse(HIGH, dtype) * 0.7, _rand(3, wshape, dtype),
                  0.1 * _rand(5, wshape, dtype), _rand(4, (1, HIGH, HIGH, 2), dtype))


CASES = ["pac_kernel_transposed", "pac_kernel_transposed_channel_wise",
         "fused_pac_conv_transpose2d", "pac_kernel_sparse_mask", "fused_pac_conv2d_sparse_mask",
         "fused_prob_pac_conv2d_dense", "fused_prob_pac_conv2d_shared"]
assert len(set(CASES)) == len(CASES)


@pytest.mark.parametrize("name", CASES)
def test_float32_gradient_matches_float64_where_the_kernel_sum_underflows(name):
    results = {}
    for dtype in (jnp.float32, jnp.float64):
        loss, args = _inputs(name, dtype)
        value, grad = jax.jit(jax.value_and_grad(loss))(*args)
        results[dtype] = np.asarray(value, np.float64), np.asarray(grad, np.float64)
    (v32, g32), (v64, g64) = results[jnp.float32], results[jnp.float64]
    assert np.all(np.isfinite(g32)), f"{name}: non-finite float32 gradient"
    assert np.abs(g64).max() > 0
    assert np.abs(g32 - g64).max() <= REL_TOL * np.abs(g64).max(), name
    np.testing.assert_allclose(v32, v64, rtol=1e-4, atol=1e-4 * np.abs(g64).max())


def _raw_window_sums(guide, transposed):
    """Window sums of the un-normalised kernel over the taps that count."""
    if transposed:
        low = jnp.ones((1, LOW, LOW, 1), guide.dtype)
        kern = ops.pac_kernel(guide, K, transposed=True, mask=low, **_T)[0]
    else:
        kern = ops.pac_kernel(guide, K, padding=P, mask=_sparse(HIGH, guide.dtype))[0]
    return kern, jnp.sum(kern, axis=(3, 4))


def test_the_cases_are_hard():
    """The raw kernel sum is below 1e-30 somewhere, and the plain ratio K / sum(K) has
    non-finite float32 gradients there (what the stable form fixes)."""
    for transposed in (True, False):
        sums = jax.jit(lambda g, t=transposed: _raw_window_sums(g, t)[1])(_guide(HIGH, jnp.float64))
        assert float(jnp.min(sums)) < 1e-30

    def naive(g):
        loss = 0.0
        for transposed in (True, False):
            kern, total = _raw_window_sums(g, transposed)
            loss += jnp.sum(kern / total[..., None, None] * _rand(1, kern.shape, g.dtype))
        return loss

    grad = jax.jit(jax.grad(naive))(_guide(HIGH, jnp.float32))
    assert not np.all(np.isfinite(np.asarray(grad)))
