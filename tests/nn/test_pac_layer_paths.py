"""Which ops the PAC layers call (issue 11 item 5): a guided call takes the guided (fused) op,
in every layer (``impl="patches"``: the two-step reference); a precomputed ``kernel=``
takes the product with ``impl``; and the guided pooling equals the two-step reference."""

import collections

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import nn, ops

OPS = ("fused_pac_conv2d", "fused_pac_conv_transpose2d", "fused_prob_pac_conv2d",
       "fused_normalized_pac_conv2d", "pac_kernel", "pac_conv2d", "pac_conv_transpose2d",
       "pac_pool2d", "prob_pac_conv2d", "normalized_pac_conv2d")


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of every ops entry point (and the ``impl`` it got) while tracing."""
    seen = collections.Counter()
    for name in OPS:
        original = getattr(ops, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            seen[_name] += 1
            if "impl" in kwargs:
                seen[f"{_name}:{kwargs['impl']}"] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(ops, name, spy)
    return seen


def _r(*shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


X, G, C = _r(1, 6, 7, 2), _r(1, 6, 7, 3, seed=1), jnp.asarray(
    np.random.default_rng(2).uniform(0.1, 1, (1, 6, 7, 1)))
LAYERS = {
    "conv": (lambda impl: nn.PacConv2d(2, 2, 3, padding=1, impl=impl,
                                       param_dtype=jnp.float64), (X, G), "fused_pac_conv2d"),
    "transposed": (lambda impl: nn.PacConvTranspose2d(2, 2, 3, stride=2, padding=1,
                                                      output_padding=1, impl=impl,
                                                      param_dtype=jnp.float64),
                   (X, _r(1, 12, 14, 3, seed=3)), "fused_pac_conv_transpose2d"),
    "pool": (lambda impl: nn.PacPool2d(3, padding=1, impl=impl), (X, G), "fused_pac_conv2d"),
    "prob": (lambda impl: nn.ProbPacConv2d(2, 2, 3, padding=1, impl=impl,
                                           param_dtype=jnp.float64), (X, C, G),
             "fused_prob_pac_conv2d"),
    "normalized": (lambda impl: nn.NormalizedPacConv2d(2, 2, 3, padding=1, impl=impl,
                                                       param_dtype=jnp.float64), (X, G),
                   "fused_normalized_pac_conv2d"),
    "pool_channel_wise": (lambda impl: nn.PacPool2d(3, padding=1, channel_wise=True,
                                                    kernel_type="inv_0.2_0.3", out_channels=2,
                                                    impl=impl, param_dtype=jnp.float64),
                          (X, X), "fused_pac_conv2d"),
}


@pytest.mark.parametrize("impl", ["loop", "auto"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_guided_call_takes_the_fused_op(name, impl, calls):
    make, args, fused = LAYERS[name]
    y = nnx.jit(lambda layer, *a: layer(*a))(make(impl), *args)
    assert y.shape[0] == 1
    assert calls[fused] == 1, dict(calls)
    assert calls["pac_kernel"] == 0, dict(calls)          # the kernel is never materialised


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_patches_is_the_two_step_reference_also_with_a_guide(name, calls):
    make, args, fused = LAYERS[name]
    nnx.jit(lambda layer, *a: layer(*a))(make("patches"), *args)
    assert calls[fused] == 0 and calls["pac_kernel"] == 1, dict(calls)
    assert sum(v for k, v in calls.items() if k.endswith(":patches")) == 1, dict(calls)


def test_precomputed_kernel_takes_the_product_with_impl(calls):
    layer = nn.PacConv2d(2, 2, 3, padding=1, impl="patches", param_dtype=jnp.float64)
    kernel, _ = ops.pac_kernel(G, 3, padding=1)
    nnx.jit(lambda layer, k: layer(X, kernel=k))(layer, kernel)
    assert calls["pac_conv2d:patches"] == 1 and calls["fused_pac_conv2d"] == 0


def test_guided_pooling_equals_the_two_step_pooling():
    """PacPool2d's guided path (fused conv, one shared all-ones filter) against pac_kernel +
    pac_pool2d, with a mask, normalisation, inv kernel, smoothing, stride and dilation."""
    x, guide = _r(2, 9, 8, 3, seed=4), _r(2, 9, 8, 2, seed=5)
    mask = jnp.asarray((np.random.default_rng(6).random((2, 9, 8, 1)) > 0.3).astype(np.float64))
    layer = nn.PacPool2d(3, stride=2, padding=2, dilation=2, kernel_type="inv_0.4_0.7_asym",
                         smooth_kernel_type="average_3", normalize_kernel=True,
                         param_dtype=jnp.float64)

    @nnx.jit
    def run(layer):
        kernel, out_mask = layer.compute_kernel(guide, mask)
        want = ops.pac_pool2d(x, kernel, kernel_size=3, stride=2, padding=2, dilation=2,
                              impl="patches")
        return layer(x, guide, mask=mask), (want, out_mask), layer(x, guide)

    (got, got_mask), (want, want_mask), unmasked = run(layer)
    assert got.shape == (2, 5, 4, 3)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(got_mask), np.asarray(want_mask))
    assert np.abs(np.asarray(unmasked) - np.asarray(got)).max() > 1e-3   # the mask mattered


def test_impl_is_checked_at_construction():
    with pytest.raises(ValueError, match="impl must be one of"):
        nn.PacConv2d(2, 2, 3, impl="shifted_typo")
    with pytest.raises(ValueError, match="impl must be one of"):
        nn.NormalizedPacConv2d(2, 2, 3, impl="fast")
    assert nn.PacConvTranspose2d(2, 2, 3, impl="fused")._product_impl() == "auto"
