# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # ppac-jax quick start: pixel-adaptive convolution as plain JAX functions
#
# This notebook builds an adapting kernel from guidance features, applies a PAC convolution,
# checks that a constant guide gives an ordinary convolution, and takes gradients.
# On Colab, install first: `!pip install "ppac-jax @ git+<repository url>"`.

# %%
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ppac_jax import ops

key_x, key_g, key_w = jax.random.split(jax.random.PRNGKey(0), 3)
x = jax.random.normal(key_x, (1, 32, 32, 4))        # input features, NHWC
guide = jax.random.normal(key_g, (1, 32, 32, 3))    # guidance features
weight = jax.random.normal(key_w, (5, 5, 4, 8)) / 10  # HWIO filter

# %% [markdown]
# The adapting kernel has one `5x5` window per output pixel: `K = exp(-||f_j - f_i||^2 / 2)`.

# %%
kernel, _ = ops.pac_kernel(guide, 5, padding=2)
y = jax.jit(lambda x, k, w: ops.pac_conv2d(x, k, w, padding=2))(x, kernel, weight)
print("kernel", kernel.shape, "output", y.shape)

# %% [markdown]
# With a constant guide every kernel value inside the image is 1, and PAC is a convolution.

# %%
flat_kernel, _ = ops.pac_kernel(jnp.zeros_like(guide), 5, padding=2)
pac = ops.pac_conv2d(x, flat_kernel, weight, padding=2)
conv = lax.conv_general_dilated(x, weight, (1, 1), [(2, 2), (2, 2)],
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
print("max |PAC - conv| =", float(jnp.max(jnp.abs(pac - conv))))

# %% [markdown]
# Gradients flow into the input, the guidance and the weights.

# %%
def loss(x, guide, weight):
    k, _ = ops.pac_kernel(guide, 5, padding=2)
    return jnp.sum(ops.pac_conv2d(x, k, weight, padding=2) ** 2)

grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, guide, weight)
print([g.shape for g in grads])
assert all(np.all(np.isfinite(g)) for g in grads)
