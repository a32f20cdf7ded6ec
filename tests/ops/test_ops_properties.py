"""Properties of the PAC ops that hold without reference vectors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from ppac_jax import ops

IMPLS = ["patches", "loop"]
DN = ("NHWC", "HWIO", "NHWC")


def _rand(seed, shape, dtype=jnp.float64):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)


@functools.partial(jax.jit, static_argnames=("stride", "padding", "dilation", "shared", "impl"))
def _pac_const_guide(x, guide, w, *, stride, padding, dilation, shared, impl):
    k = w.shape[0]
    kern, _ = ops.pac_kernel(guide, k, stride=stride, padding=padding, dilation=dilation)
    return ops.pac_conv2d(x, kern, w, stride=stride, padding=padding, dilation=dilation,
                          shared_filters=shared, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k,stride,padding,dilation,shared", [
    (3, 1, 1, 1, False), (5, 2, 2, 1, False), (3, 2, 2, 2, False), (3, 1, 0, 1, False), (3, (1, 2), (0, 1), 1, False),
    (3, 1, 1, 1, True), (5, 2, 4, 2, True),
])
def test_constant_guide_equals_conv(k, stride, padding, dilation, shared, impl):
    x = _rand(0, (2, 11, 13, 3))
    # A constant, nonzero guide: out-of-image taps get K != 1 but read zero padding anyway
    # (holds while every window centre is inside the image: padding <= (k // 2) * dilation).
    guide = jnp.full((2, 11, 13, 2), 0.7)
    w = _rand(1, (k, k, 1, 1) if shared else (k, k, 3, 4))
    y = _pac_const_guide(x, guide, w, stride=stride, padding=padding, dilation=dilation,
                         shared=shared, impl=impl)
    s, p, d = (ops.geometry.as_pair(v, "") for v in (stride, padding, dilation))
    rhs = jnp.tile(w, (1, 1, 1, 3)) if shared else w
    ref = lax.conv_general_dilated(x, rhs, s, [(p[0], p[0]), (p[1], p[1])], rhs_dilation=d,
                                   dimension_numbers=DN, feature_group_count=3 if shared else 1)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k,stride,padding,output_padding,dilation", [
    (3, 2, 1, 1, 1), (5, 2, 2, 0, 1), (3, 2, 2, 1, 2), (5, 3, 1, 2, 1), (3, 1, 3, 0, 1),
])
def test_transposed_unit_kernel_equals_conv_transpose(k, stride, padding, output_padding,
                                                      dilation, impl):
    x = _rand(2, (2, 5, 6, 3))
    w = _rand(3, (k, k, 3, 4))
    ho = (5 - 1) * stride - 2 * padding + dilation * (k - 1) + 1 + output_padding
    wo = (6 - 1) * stride - 2 * padding + dilation * (k - 1) + 1 + output_padding
    ones = jnp.ones((2, ho, wo, k, k))
    y = jax.jit(functools.partial(ops.pac_conv_transpose2d, stride=stride, padding=padding,
                                  output_padding=output_padding, dilation=dilation,
                                  impl=impl))(x, ones, w)
    lo = (k - 1) * dilation - padding
    ref = lax.conv_transpose(x, w, (stride, stride), [(lo, lo + output_padding)] * 2,
                             rhs_dilation=(dilation, dilation), dimension_numbers=DN)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_transposed_equals_torch_style_flipped_conv_transpose():
    """With K = 1 the PAC transposed conv equals conv_transpose(transpose_kernel=True) of flipped W."""
    x, w = _rand(4, (1, 4, 5, 2)), _rand(5, (3, 3, 2, 3))
    y = ops.pac_conv_transpose2d(x, jnp.ones((1, 8, 10, 3, 3)), w, stride=2, padding=1,
                                 output_padding=1)
    w_flipped_io = jnp.swapaxes(w[::-1, ::-1], 2, 3)  # what PyTorch calls W, in HWOI
    ref = lax.conv_transpose(x, w_flipped_io, (2, 2), [(1, 2)] * 2, dimension_numbers=DN,
                             transpose_kernel=True)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k,stride,padding,dilation", [(3, 1, 1, 1), (5, 2, 2, 1), (3, 2, 2, 2)])
def test_pool_sum_and_average(k, stride, padding, dilation, impl):
    x = _rand(6, (2, 9, 10, 3))
    guide = jnp.full((2, 9, 10, 4), -1.3)
    opts = dict(kernel_size=k, stride=stride, padding=padding, dilation=dilation)
    ho = (9 + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (10 + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    window = dict(window_dimensions=(1, k, k, 1), window_strides=(1, stride, stride, 1),
                  padding=[(0, 0), (padding, padding), (padding, padding), (0, 0)],
                  window_dilation=(1, dilation, dilation, 1))
    sums = lax.reduce_window(x, 0.0, lax.add, **window)
    counts = lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, **window)

    y_sum = ops.pac_pool2d(x, jnp.ones((2, ho, wo, k, k)), impl=impl, **opts)
    np.testing.assert_allclose(y_sum, sums, rtol=1e-12, atol=1e-12)

    kern, _ = ops.pac_kernel(guide, k, stride=stride, padding=padding, dilation=dilation,
                             normalize=True)
    y_avg = ops.pac_pool2d(x, kern, impl=impl, **opts)
    np.testing.assert_allclose(y_avg, sums / counts, rtol=1e-12, atol=1e-12)


def _full_pac(x, guide, w, impl):
    kern, _ = ops.pac_kernel(guide, 3, stride=2, padding=1)
    return ops.pac_conv2d(x, kern, w, stride=2, padding=1, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_jit_vmap_and_eager_agree(impl):
    x, guide, w = _rand(7, (3, 2, 8, 9, 3)), _rand(8, (3, 2, 8, 9, 2)), _rand(9, (3, 3, 3, 2))
    fn = functools.partial(_full_pac, impl=impl)
    eager = jnp.stack([fn(x[i], guide[i], w) for i in range(3)])
    jitted = jnp.stack([jax.jit(fn)(x[i], guide[i], w) for i in range(3)])
    vmapped = jax.jit(jax.vmap(fn, in_axes=(0, 0, None)))(x, guide, w)
    np.testing.assert_allclose(jitted, eager, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_low_precision_close_to_float64(dtype, rtol, impl):
    x, guide, w = _rand(10, (1, 12, 12, 4)), 0.5 * _rand(11, (1, 12, 12, 3)), _rand(12, (3, 3, 4, 5))
    ref = _full_pac(x, guide, w, impl)
    low = jax.jit(functools.partial(_full_pac, impl=impl))(
        x.astype(dtype), guide.astype(dtype), w.astype(dtype))
    assert low.dtype == dtype
    low = np.asarray(low.astype(jnp.float64))
    assert np.all(np.isfinite(low))
    scale = np.max(np.abs(ref))
    np.testing.assert_allclose(low, ref, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_finite_differences(impl):
    x, guide = _rand(13, (1, 6, 7, 2)), 0.5 * _rand(14, (1, 6, 7, 2))
    w, b = _rand(15, (3, 3, 2, 3)), _rand(16, (3,))

    def conv(x, guide, w, b):
        kern, _ = ops.pac_kernel(guide, 3, padding=2, dilation=2, kernel_type="inv", asym=True,
                                 inv_alpha=0.3, inv_lambda=1.5, smooth_kernel=jnp.full((3, 3), 1 / 9),
                                 normalize=True)
        return ops.pac_conv2d(x, kern, w, b, padding=2, dilation=2, impl=impl)

    def transposed(x, guide, w):
        kern, _ = ops.pac_kernel(guide[:, :, :6], 3, stride=2, padding=1, output_padding=1,
                                 transposed=True)
        return ops.pac_conv_transpose2d(x[:, :3, :3], kern, w, stride=2, padding=1,
                                        output_padding=1, impl=impl)

    def pool(x, guide):
        kern, _ = ops.pac_kernel(guide, 3, stride=2, padding=1, channel_wise=True)
        return ops.pac_pool2d(x, kern, kernel_size=3, stride=2, padding=1, impl=impl)

    check_grads(jax.jit(conv), (x, guide, w, b), order=1, modes=["rev"])
    check_grads(jax.jit(transposed), (x, guide, w), order=1, modes=["rev"])
    check_grads(jax.jit(pool), (x, guide), order=1, modes=["rev"])


def test_transposed_mask_without_normalize_has_no_nan():
    """SPEC fix: windows without any real tap give K = 0 and output_mask = 0, not NaN."""
    guide = _rand(17, (1, 10, 12, 2))
    mask = jnp.ones((1, 5, 6, 1))
    kern, out_mask = ops.pac_kernel(guide, 3, stride=2, padding=2, output_padding=1,
                                    dilation=2, transposed=True, mask=mask)
    assert np.all(np.isfinite(kern)) and np.all(np.isfinite(out_mask))
    empty = np.asarray(out_mask[..., 0]) == 0
    assert empty.any(), "this geometry has windows with no real tap"
    assert np.all(np.asarray(kern)[empty] == 0)


def test_smoothing_with_dilation_samples_smoothed_guide_at_window_centres():
    """SPEC fix for dilation > 1: centre feature = smoothed guide sampled at the output grid."""
    guide = _rand(18, (1, 9, 9, 2))
    smooth = jnp.full((3, 3), 1 / 9)
    kern, _ = ops.pac_kernel(guide, 3, padding=2, dilation=2, smooth_kernel=smooth)
    smoothed = lax.conv_general_dilated(guide, jnp.tile(smooth[:, :, None, None], (1, 1, 1, 2)),
                                        (1, 1), "SAME", dimension_numbers=DN, feature_group_count=2)
    padded = jnp.pad(guide, ((0, 0), (2, 2), (2, 2), (0, 0)))
    # tap (0, 2) of output pixel (4, 4) reads input (2, 6)
    diff = padded[0, 4 + 0, 4 + 4] - smoothed[0, 4, 4]
    np.testing.assert_allclose(kern[0, 4, 4, 0, 2], jnp.exp(-0.5 * jnp.sum(diff ** 2)), rtol=1e-12)
