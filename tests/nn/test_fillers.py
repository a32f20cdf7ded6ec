"""Fillers against the reference (fillers_f32.npz) and properties of the random ones."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppac_jax.nn import fillers
from tests.golden import Golden



def _oihw_to_hwio(a):
    return np.transpose(a, (2, 3, 1, 0))


def _iohw_to_hwio(a):
    return np.transpose(a, (2, 3, 0, 1))


@pytest.fixture(scope="module")
def gold():
    return Golden("fillers_f32.npz")


def test_gaussian_2d(gold):
    names = [k for k in gold.arrays if k.startswith("np_gaussian_2d_w")]
    assert names
    for name in names:
        w = int(name.rsplit("w", 1)[1])
        got = fillers.gaussian_2d(w)
        assert got.dtype == np.float32 and got.shape == (w, w)
        np.testing.assert_allclose(got, gold[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_crf(gold):
    names = [k for k in gold.arrays if re.fullmatch(r"crf_C\d+_k\d+_(full|shared)", k)]
    assert names
    for name in names:
        c, k, kind = re.fullmatch(r"crf_C(\d+)_k(\d+)_(full|shared)", name).groups()
        got = fillers.crf_weight(int(c), int(c), int(k), kind == "shared")
        np.testing.assert_allclose(got, _oihw_to_hwio(gold[name]), rtol=1e-6, atol=1e-7,
                                   err_msg=name)


def test_crf_pool(gold):
    for name in [k for k in gold.arrays if k.startswith("crf_pool_k")]:
        k = int(name.rsplit("k", 1)[1])
        np.testing.assert_array_equal(fillers.crf_pool_weight(k), _oihw_to_hwio(gold[name]))


def test_linear(gold):
    info = gold.meta["linear_info"]
    assert info
    for name, args in info.items():
        got = fillers.linear_weight(args["in_channels"], args["kernel_size"], args["stride"],
                                    args["normalize_kernel"], args["shared_filters"])
        np.testing.assert_allclose(got, _iohw_to_hwio(gold[name]), rtol=1e-6, atol=1e-7,
                                   err_msg=name)


def test_linear_rejects_bad_geometry():
    with pytest.raises(ValueError, match="kernel_size"):
        fillers.linear_weight(2, 4, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        fillers.linear_weight(2, 3, 4)


def test_crf_rectangular_channels_off_diagonal():
    w = fillers.crf_weight(2, 3, 3, False)
    assert w.shape == (3, 3, 2, 3)
    assert np.all(w[:, :, 0, 0] == 0) and np.all(w[:, :, 1, 1] == 0)
    np.testing.assert_array_equal(w[:, :, 0, 2], fillers.crf_weight(2, 3, 3, True)[:, :, 0, 0])


def test_uniform_bounds_numpy_and_jax():
    fan_in = 3 * 5 * 5
    b = 1 / np.sqrt(fan_in)
    w = fillers.uniform_weight(np.random.default_rng(0), (5, 5, 3, 4), fan_in)
    assert w.shape == (5, 5, 3, 4) and w.dtype == np.float32
    assert np.abs(w).max() <= b and np.abs(w).max() > 0.8 * b
    wj = np.asarray(fillers.uniform_weight(jax.random.key(0), (5, 5, 3, 4), fan_in))
    assert np.abs(wj).max() <= b and np.abs(wj).max() > 0.8 * b
    np.testing.assert_array_equal(fillers.uniform_weight(3, (4,), 2),
                                  fillers.uniform_weight(3, (4,), 2))


def test_crf_perturbed_close_to_crf():
    base = fillers.crf_weight(3, 3, 5, False)
    w = fillers.crf_perturbed_weight(np.random.default_rng(1), 3, 3, 5, False)
    delta = np.abs(w - base)
    assert 0 < delta.max() <= 0.1 / np.sqrt(3 * 25)


def test_pool_averages():
    np.testing.assert_allclose(fillers.pool_weight(1, 1, 3, True).sum(), 1.0, rtol=1e-6)
    w = fillers.pool_weight(2, 2, (3, 5), False)
    assert w.shape == (3, 5, 2, 2)
    np.testing.assert_allclose(w.sum(axis=(0, 1)), np.eye(2), rtol=1e-6)
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        fillers.pool_weight(2, 3, 3, False)


def _linear_layer_outputs(k, s, p, op, h=5):
    """Constant-guide PacConvTranspose2d with the linear filler, with and without normalisation."""
    from flax import nnx
    from ppac_jax import nn

    layers = [nn.PacConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=op,
                                    normalize_kernel=normalize, filler="linear", bias=False,
                                    rngs=nnx.Rngs(0)) for normalize in (False, True)]

    @nnx.jit
    def run(layers, x, guide):
        return [layer(x, guide)[0, :, :, 0] for layer in layers]

    x = jax.random.uniform(jax.random.key(1), (1, h, h, 1)) + 0.5
    size = (h - 1) * s - 2 * p + k + op
    return [np.asarray(o, np.float64) for o in run(layers, x, jnp.zeros((1, size, size, 3)))]


def test_linear_filler_border_with_normalized_kernel():
    # k=5, s=2 (PacJointUpsample): first row/column 1.5x, corner 2.25x the bilinear value
    bilinear, normalized = _linear_layer_outputs(5, 2, 2, 1)
    ratio = normalized / bilinear
    np.testing.assert_allclose(ratio[0, 0], 2.25, rtol=1e-6)
    np.testing.assert_allclose(ratio[0, 1:7], 1.5, rtol=1e-6)
    np.testing.assert_allclose(ratio[1:7, 0], 1.5, rtol=1e-6)
    np.testing.assert_allclose(ratio[1:7, 1:7], 1.0, rtol=1e-6)  # away from the border: bilinear
    # bilinear itself: output 2i is input i, output 2i+1 the mean of inputs i and i+1
    x = jax.random.uniform(jax.random.key(1), (1, 5, 5, 1))[0, :, :, 0] + 0.5
    np.testing.assert_allclose(bilinear[::2, ::2][:4, :4], x[:4, :4], rtol=1e-6)
    np.testing.assert_allclose(bilinear[1, 0], (x[0, 0] + x[1, 0]) / 2, rtol=1e-6)


@pytest.mark.parametrize("k,s,p,op", [(9, 4, 4, 3), (3, 2, 1, 1)])
def test_linear_filler_is_bilinear_where_the_window_is_inside(k, s, p, op):
    h = 5
    bilinear, normalized = _linear_layer_outputs(k, s, p, op, h)
    o = np.arange(bilinear.shape[0])
    # input rows reached by output row o: ceil((o + p - k + 1) / s) .. floor((o + p) / s)
    inside = (-((o + p - k + 1) // -s) >= 0) & ((o + p) // s <= h - 1)
    assert inside.sum() >= 2 and not inside.all()
    np.testing.assert_allclose(normalized[np.ix_(inside, inside)],
                               bilinear[np.ix_(inside, inside)], rtol=1e-6)
