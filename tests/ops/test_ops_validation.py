"""Bad input raises ValueError naming the argument, before anything reaches XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppac_jax import ops

X = jnp.zeros((1, 8, 8, 3))
G = jnp.zeros((1, 8, 8, 2))
K3 = jnp.ones((1, 8, 8, 3, 3))
W = jnp.zeros((3, 3, 3, 4))


@pytest.mark.parametrize("call,match", [
    (lambda: ops.pac_kernel(G, 4), "kernel_size"),
    (lambda: ops.pac_kernel(G, (3, 2)), "kernel_size"),
    (lambda: ops.pac_kernel(G, 3, padding=-1), "padding"),
    (lambda: ops.pac_kernel(G, 3, stride=0), "stride"),
    (lambda: ops.pac_kernel(G, 3, stride="12"), "stride"),
    (lambda: ops.pac_kernel(G, 3, padding=(1.5, 1)), "padding"),
    (lambda: ops.pac_kernel(G, 3, dilation="ab"), "dilation"),
    (lambda: ops.pac_kernel(G, (3, True)), "kernel_size"),
    (lambda: ops.pac_kernel(G[0], 3), "guide"),
    (lambda: ops.pac_kernel(G, 3, kernel_type="inv"), "inv_alpha"),
    (lambda: ops.pac_kernel(G, 3, kernel_type="inv", inv_alpha=1.0), "inv_lambda"),
    (lambda: ops.pac_kernel(G, 3, kernel_type="inv", inv_alpha=jnp.ones(2), inv_lambda=1.0),
     "inv_alpha"),
    (lambda: ops.pac_kernel(G, 3, kernel_type="laplace"), "kernel_type"),
    (lambda: ops.pac_kernel(G, 3, padding=1, mask=jnp.ones((1, 8, 8))), "mask"),
    (lambda: ops.pac_kernel(G, 3, padding=1, mask=jnp.ones((1, 4, 4, 1))), "mask"),
    (lambda: ops.pac_kernel(G, 3, smooth_kernel=jnp.ones((2, 2))), "smooth_kernel"),
    (lambda: ops.pac_kernel(jnp.zeros((1, 9, 8, 2)), 3, stride=2, padding=1, output_padding=1,
                            transposed=True), "guide spatial size"),
    (lambda: ops.pac_kernel(jnp.zeros((1, 9, 9, 2)), 3, stride=2, padding=1, output_padding=2,
                            transposed=True), "output_padding must be smaller"),
    (lambda: ops.pac_conv2d(X, K3, jnp.zeros((4, 4, 3, 4)), padding=1), "kernel size"),
    (lambda: ops.pac_conv2d(X, K3, jnp.zeros((3, 3, 2, 4)), padding=1), "weight input channels"),
    (lambda: ops.pac_conv2d(X, K3, jnp.zeros((3, 3, 2, 2)), padding=1, shared_filters=True),
     "shared_filters"),
    (lambda: ops.pac_conv2d(X, K3, W, padding=0), "kernel must have shape"),
    (lambda: ops.pac_conv2d(X, K3[..., None].repeat(2, -1), W, padding=1), "channel-wise"),
    (lambda: ops.pac_conv2d(X, K3, W, padding=-1), "padding"),
    (lambda: ops.pac_conv2d(X[0], K3, W, padding=1), "x must have rank 4"),
    (lambda: ops.pac_conv2d(X, K3, W[0], padding=1), "weight must have rank 4"),
    (lambda: ops.pac_conv2d(X, K3, W, jnp.zeros(3), padding=1), "bias"),
    (lambda: ops.pac_conv2d(X, K3, W, padding=1, impl="cuda"), "impl"),
    (lambda: ops.pac_conv2d(X, K3, W, padding=1, impl="loop", tiling=(False, 8)), "tiling"),
    (lambda: ops.pac_kernel(G, 3, tiling=ops.tiling.Tiling(rows=-1)), "tiling"),
    (lambda: ops.fused_pac_conv2d(X, G, W, tiling="planar"), "tiling"),
    (lambda: ops.fused_pac_conv2d(X, G, W, tiling=ops.tiling.Tiling(2, 8)), "tiling"),
    (lambda: ops.pac_kernel(G, 3, tiling=ops.tiling.Tiling(True, True)), "tiling"),
    (lambda: ops.pac_conv_transpose2d(X, K3, W, stride=2, output_padding=2), "output_padding"),
    (lambda: ops.pac_conv_transpose2d(X, K3, W, stride=2, padding=1), "kernel must have shape"),
    (lambda: ops.pac_pool2d(X, K3, kernel_size=5, padding=2), "kernel must have shape"),
    (lambda: ops.pac_pool2d(X, K3, kernel_size=2), "kernel_size"),
    (lambda: ops.prob_pac_conv2d(X, jnp.ones((1, 8, 8, 2)), K3, W, W, padding=1), "confidence"),
    (lambda: ops.prob_pac_conv2d(X, jnp.ones((1, 8, 8, 1)), K3, W, W[..., :2], padding=1),
     "weight_norm"),
])
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_tiling_takes_numpy_ints_and_must_be_static():
    tiling = ops.tiling.Tiling(False, np.int64(3))
    np.testing.assert_allclose(ops.fused_pac_conv2d(X, G, W, padding=1, tiling=tiling),
                               ops.fused_pac_conv2d(X, G, W, padding=1), rtol=1e-6, atol=1e-6)
    traced = jax.jit(lambda t: ops.fused_pac_conv2d(X, G, W, padding=1, tiling=t))
    with pytest.raises(ValueError, match="static"):
        traced(ops.tiling.Tiling(False, 3))


def test_untied_crf_needs_one_unary_weight_per_step():
    terms = [ops.make_term(3, compat_type="na")]
    params = [ops.TermParams(jnp.zeros((2, 3, 3, 2, 2)), jnp.ones((2,)))]
    for weight in (1.0, jnp.ones(3)):
        with pytest.raises(ValueError, match="unary_weight"):
            ops.mean_field(jnp.zeros((1, 6, 6, 2)), [None], terms, params, weight, num_steps=2,
                           untied=True)
