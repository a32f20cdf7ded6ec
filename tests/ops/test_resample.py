"""ops.resize_bilinear (PyTorch's bilinear interpolate) and ops.max_pool_ceil (ceil-mode pool)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppac_jax import ops


def _torch_bilinear_1d(x, n_out, align_corners):
    """Direct per-sample formula of PyTorch's bilinear interpolation along axis 0."""
    n_in = x.shape[0]
    out = []
    for o in range(n_out):
        if align_corners:
            s = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            s = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(np.floor(s)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        out.append(x[i0] * (1 - (s - i0)) + x[i1] * (s - i0))
    return np.stack(out)


@pytest.mark.parametrize("size", [(10, 3), (4, 14), (7, 7)])
@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_bilinear_matches_the_separable_formula(size, align_corners):
    x = np.random.default_rng(0).standard_normal((2, 5, 7, 3))
    want = _torch_bilinear_1d(x.transpose(1, 0, 2, 3), size[0], align_corners).transpose(1, 0, 2, 3)
    want = _torch_bilinear_1d(want.transpose(2, 1, 0, 3), size[1], align_corners).transpose(2, 1, 0, 3)
    got = ops.resize_bilinear(jnp.asarray(x), size, align_corners=align_corners)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_resize_bilinear_upsampling_equals_jax_image_resize():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 6, 5, 2)))
    np.testing.assert_allclose(ops.resize_bilinear(x, (18, 10)),
                               jax.image.resize(x, (1, 18, 10, 2), "bilinear"), rtol=1e-12)


def test_max_pool_ceil_keeps_partial_windows():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((1, 5, 6, 2)))
    got = np.asarray(ops.max_pool_ceil(x, window=2, stride=2))
    assert got.shape == (1, 3, 3, 2)
    for i in range(3):
        for j in range(3):
            np.testing.assert_array_equal(got[0, i, j], x[0, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max((0, 1)))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="x"):
        ops.resize_bilinear(jnp.ones((4, 4, 3)), (8, 8))
    with pytest.raises(ValueError, match="size"):
        ops.resize_bilinear(jnp.ones((1, 4, 4, 3)), (0, 8))
    with pytest.raises(ValueError, match="max pooling needs"):
        ops.max_pool_ceil(jnp.ones((1, 1, 4, 3)))
