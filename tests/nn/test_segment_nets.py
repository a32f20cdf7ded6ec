"""FCN-8s family: shapes, crops, width multiplier, dropout modes, errors (golden values are in
test_fcn_golden.py)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import convert, nn


@pytest.fixture(scope="module")
def narrow():
    m = nn.FCN8s(4, width=1 / 32, init="he")
    m.eval()
    return m


@nnx.jit
def _apply(model, x):
    return model(x)


def test_width_multiplier_and_names(narrow):
    assert narrow.conv1_1.out_channels == 2 and narrow.fc6.out_channels == 128
    names = set(convert.torch_variables(narrow))
    assert {"conv1_1.weight", "fc7.bias", "score_fr.weight", "score_pool3.bias",
            "upscore2.weight", "upscore_pool4.weight", "upscore8.weight"} <= names
    assert "upscore8.bias" not in names and len(names) == 39
    w = convert.export_torch_weights(narrow)["upscore8.weight"]
    assert w.shape == (4, 4, 16, 16)
    np.testing.assert_array_equal(w[1, 1], nn.fillers.upsampling_weight(1, 1, 16)[:, :, 0, 0])


def test_original_init_is_zero_convs_bilinear_upscores():
    m = nn.FCN8s(2, width=1 / 64)
    sd = convert.export_torch_weights(m)
    assert not sd["conv3_1.weight"].any() and not sd["fc6.bias"].any()
    assert sd["upscore2.weight"][0, 0].max() > 0


def test_any_size_and_out_crop(narrow):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 19, 27, 3)) * 50, jnp.float32)
    y = _apply(narrow, x)
    assert y.shape == (2, 19, 27, 4)
    np.testing.assert_array_equal(np.asarray(narrow(x, out_crop=(7, 11))),
                                  np.asarray(y)[:, :7, :11])
    with pytest.raises(ValueError, match="out_crop"):
        narrow(x, out_crop=(20, 3))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        narrow(x[..., :2])


def test_altpad_and_pac_need_multiples_of_32():
    for cls in (nn.FCN8sAltPad, nn.FCN8sPac):
        m = cls(2, width=1 / 32)
        with pytest.raises(ValueError, match="multiples of 32"):
            m(jnp.zeros((1, 40, 64, 3)))


def test_dropout_train_vs_eval():
    m = nn.FCN8s(3, width=1 / 32, init="he")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 32, 32, 3)) * 50, jnp.float32)
    a = m(x, rngs=nnx.Rngs(dropout=0))
    b = m(x, rngs=nnx.Rngs(dropout=1))
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0
    m.eval()
    np.testing.assert_array_equal(np.asarray(m(x, rngs=nnx.Rngs(dropout=0))),
                                  np.asarray(m(x, rngs=nnx.Rngs(dropout=1))))


def test_conv_transpose_matches_pytorch_semantics():
    """ConvTranspose2d = scatter of every input pixel times the unflipped weight."""
    rng = np.random.default_rng(2)
    layer = nn.ConvTranspose2d(2, 3, 4, stride=2, padding=1, bias=False,
                               param_dtype=jnp.float64)
    w = np.asarray(layer.weight[...])
    x = rng.normal(size=(1, 3, 5, 2))
    full = np.zeros((1, (3 - 1) * 2 + 4, (5 - 1) * 2 + 4, 3))
    for i in range(3):
        for j in range(5):
            full[0, 2 * i:2 * i + 4, 2 * j:2 * j + 4] += np.einsum("c,hwco->hwo", x[0, i, j], w)
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), full[:, 1:-1, 1:-1],
                               rtol=1e-12, atol=1e-12)
