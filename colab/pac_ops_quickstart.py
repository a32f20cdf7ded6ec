# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # ppac-jax quick start: pixel-adaptive convolution as plain JAX functions
#
# A pixel-adaptive convolution (PAC, Su et al., CVPR 2019) multiplies an ordinary filter, at
# every pixel, by an **adapting kernel** computed from guidance features, so the filter follows
# the edges of the guide. This notebook shows, on a built-in picture (no download):
#
# 1. what the adapting kernel looks like at a few pixels (flat region, edge, texture);
# 2. the three ops: PAC convolution, transposed PAC convolution (upsampling) and PAC pooling;
# 3. that a constant guide gives back the ordinary convolution, numerically;
# 4. edge-aware smoothing, before and after;
# 5. gradients (learning the colour bandwidth by gradient descent), `jit` and `vmap`.
#
# It runs in about a minute on a Colab CPU runtime and uses a GPU or TPU when one is attached.

# %%
# Install ppac-jax from its repository (pip install ...) unless it is already importable.
import importlib.util
import os
import subprocess
import sys

# where this repository lives (a fork, a mirror): set PPAC_JAX_REPOSITORY or edit the default
REPOSITORY = os.environ.get("PPAC_JAX_REPOSITORY", "git+https://github.com/ppac-jax/ppac-jax")
if importlib.util.find_spec("ppac_jax") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    f"ppac-jax[notebooks] @ {REPOSITORY}"], check=True)

# %%
import os
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from jax import lax

from ppac_jax import ops
from ppac_jax.data import synthetic

SMALL = os.environ.get("PPAC_NOTEBOOK_SMALL") == "1"  # tiny sizes (used by the tests)
OUT = os.environ.get("PPAC_NOTEBOOK_OUT")  # also save every figure here (used by the tests)


def show(fig, name):
    """Display a figure (and save it as OUT/name.png when PPAC_NOTEBOOK_OUT is set)."""
    if OUT:
        fig.savefig(os.path.join(OUT, f"{name}.png"), dpi=72, bbox_inches="tight")
    plt.show()
    plt.close(fig)


print("JAX", jax.__version__, "on", jax.devices())

# %% [markdown]
# ## A built-in picture
#
# `ppac_jax.data.synthetic.make_scene` renders a picture (and a second frame with exact optical
# flow, used in the flow notebook): a textured background and foreground layers, some textured,
# some nearly flat. Arrays are NHWC: `[batch, height, width, channels]`.

# %%
H, W = (64, 96) if SMALL else (128, 192)
scene = synthetic.make_scene(0, height=H, width=W)
image = scene["image1"]  # [H, W, 3] float32 in [0, 1]
layers = scene["layer"]  # [H, W] index of the visible layer (used only to find an edge pixel)

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.imshow(image)
ax.set_title(f"built-in picture ({H}x{W})")
ax.axis("off")
show(fig, "picture")

# %% [markdown]
# ## 1. The adapting kernel
#
# The guidance features here are the pixel colours divided by a bandwidth `sigma`. For output
# pixel `i` and window tap `j` the Gaussian adapting kernel is
# `K[i, j] = exp(-||f_j - f_i||^2 / 2)`: close to 1 where the neighbour has the centre's colour,
# close to 0 across an edge. `ops.pac_kernel` returns one `k x k` window per output pixel,
# shape `[B, H, W, k, k]`.

# %%
k = 11
sigma_colour = 0.1
guide = jnp.asarray(image)[None] / sigma_colour  # [1, H, W, 3]
kernel, _ = ops.pac_kernel(guide, k, padding=k // 2)
print("guide", guide.shape, "-> kernel", kernel.shape)

# three pixels, each at least half a window away from the border: the flattest, the most
# textured (inside one layer), and the strongest colour edge around the flattest pixel's layer
r = k // 2
windows = np.lib.stride_tricks.sliding_window_view(image, (k, k), axis=(0, 1))  # [H-k+1, W-k+1, 3, k, k]
local_std = windows.std(axis=(-1, -2)).mean(-1)
inner = np.zeros((H, W), bool)
inner[r:H - r, r:W - r] = True
flat = tuple(int(v) + r for v in np.unravel_index(np.argmin(local_std), local_std.shape))
one_layer = np.lib.stride_tricks.sliding_window_view(layers, (k, k)).std(axis=(-1, -2)) == 0
texture = tuple(int(v) + r for v in np.unravel_index(np.argmax(np.where(one_layer, local_std, -1)),
                                                     local_std.shape))
# the edge pixel: on the border of the flat pixel's layer, where the colour jumps the most
own = layers == layers[flat]
border = own & ~(np.roll(own, 1, 0) & np.roll(own, -1, 0) & np.roll(own, 1, 1) & np.roll(own, -1, 1))
jump = np.abs(image - np.roll(image, 1, 1)).sum(-1) + np.abs(image - np.roll(image, -1, 1)).sum(-1)
jump += np.abs(image - np.roll(image, 1, 0)).sum(-1) + np.abs(image - np.roll(image, -1, 0)).sum(-1)
edge = tuple(int(v) for v in np.unravel_index(np.argmax(np.where(border & inner, jump, -1)), (H, W)))
pixels = {"flat": flat, "edge": edge, "texture": texture}
print({name: p for name, p in pixels.items()})

# %%
colours = {"flat": "tab:green", "edge": "tab:red", "texture": "tab:blue"}
fig = plt.figure(figsize=(11, 4.2))
grid = fig.add_gridspec(2, 5, width_ratios=[2.4, 1, 1, 1, 0.08])
ax = fig.add_subplot(grid[:, 0])
ax.imshow(image)
for name, (y, x) in pixels.items():
    ax.add_patch(plt.Rectangle((x - r - 0.5, y - r - 0.5), k, k, fill=False, lw=2,
                               color=colours[name]))
ax.set_title(f"{k}x{k} windows at three pixels")
ax.axis("off")
for col, (name, (y, x)) in enumerate(pixels.items(), start=1):
    top = fig.add_subplot(grid[0, col])
    top.imshow(image[y - r:y + r + 1, x - r:x + r + 1], interpolation="nearest")
    top.set_title(f"{name}: image", color=colours[name])
    bottom = fig.add_subplot(grid[1, col])
    im = bottom.imshow(np.asarray(kernel[0, y, x]), vmin=0, vmax=1, cmap="viridis",
                       interpolation="nearest")
    bottom.set_title(f"kernel K, sum {float(kernel[0, y, x].sum()):.0f}")
    for a in (top, bottom):
        a.set_xticks([])
        a.set_yticks([])
fig.colorbar(im, cax=fig.add_subplot(grid[:, 4]))
fig.tight_layout()
show(fig, "kernel_windows")

# %% [markdown]
# In the flat region the kernel is (almost) all ones: PAC acts like the plain filter. At the
# edge it keeps the taps on the centre pixel's side and drops the others. In the texture it
# keeps only the neighbours of similar colour.
#
# ## 2. The ops: PAC convolution, transposed convolution, pooling
#
# All three take a precomputed kernel with the same window geometry as the op
# (`kernel_size`, `stride`, `padding`, `dilation`). Filters are HWIO, as in `flax.nnx.Conv`.
#
# **`ops.pac_conv2d`** with a Gaussian blur filter: the plain convolution blurs across edges;
# the PAC version (divided by the PAC of a constant image, so the weights under the kernel sum
# to one) smooths only within regions.

# %%
def gaussian_filter(size, sigma, channels):
    """A [size, size, C, C] HWIO Gaussian blur that filters every channel on its own."""
    t = np.arange(size) - size // 2
    g = np.exp(-0.5 * (t[:, None] ** 2 + t[None] ** 2) / sigma ** 2)
    g /= g.sum()
    return jnp.asarray(g[:, :, None, None] * np.eye(channels)[None, None], jnp.float32)


x = jnp.asarray(image)[None]
blur = gaussian_filter(k, 3.0, 3)


@jax.jit
def blur_both(x, kernel):
    plain = lax.conv_general_dilated(x, blur, (1, 1), [(r, r), (r, r)],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    pac = ops.pac_conv2d(x, kernel, blur, padding=r)
    # the same PAC of a constant image: the kernel mass under the filter at every pixel
    mass = ops.pac_conv2d(jnp.ones_like(x[..., :1]), kernel, blur[:, :, :1, :1], padding=r)
    return plain, pac / mass


plain_blur, pac_blur = blur_both(x, kernel)
print("x", x.shape, "-> pac_conv2d", pac_blur.shape)

# %% [markdown]
# **`ops.pac_conv_transpose2d`** upsamples. With bilinear weights (`nn.fillers.linear_weight`)
# and a constant kernel it is bilinear upsampling; with the kernel of the full-resolution guide
# (built with `transposed=True`) the upsampled picture takes its edges from the guide: joint
# upsampling. **`ops.pac_pool2d`** sums the input under the kernel (no filter); with a
# normalised kernel (`normalize=True`) and stride 2 it is an edge-aware downsampling.

# %%
from ppac_jax.nn import fillers

up_weight = jnp.asarray(fillers.linear_weight(3, 3, 2))  # [3, 3, 3, 3] HWIO
up = dict(stride=2, padding=1, output_padding=1)


@jax.jit
def resample(x, guide):
    low = x[:, ::2, ::2]  # half resolution
    up_kernel, _ = ops.pac_kernel(guide, 3, transposed=True, **up)  # on the output grid
    bilinear = ops.pac_conv_transpose2d(low, jnp.ones_like(up_kernel), up_weight, **up)
    pac_up = ops.pac_conv_transpose2d(low, up_kernel, up_weight, **up)
    mass = ops.pac_conv_transpose2d(jnp.ones_like(low[..., :1]), up_kernel,
                                    up_weight[:, :, :1, :1], **up)
    pool_kernel, _ = ops.pac_kernel(guide, 3, stride=2, padding=1, normalize=True)
    pooled = ops.pac_pool2d(x, pool_kernel, kernel_size=3, stride=2, padding=1)
    return low, bilinear, pac_up / mass, pooled


low, bilinear, pac_up, pooled = resample(x, guide)
print("low", low.shape, "-> pac_conv_transpose2d", pac_up.shape)
print("x", x.shape, "-> pac_pool2d (stride 2)", pooled.shape)

panels = [("input", x[0]), ("plain conv (Gaussian)", plain_blur[0]),
          ("PAC conv (same filter)", pac_blur[0]), ("PAC pool, stride 2", pooled[0]),
          ("half resolution", low[0]), ("transposed conv = bilinear x2", bilinear[0]),
          ("PAC transposed conv x2", pac_up[0])]
fig, axes = plt.subplots(2, 4, figsize=(12, 4.8))
for a, (title, picture) in zip(axes.flat, panels):
    a.imshow(np.clip(np.asarray(picture), 0, 1), interpolation="nearest")
    a.set_title(title, fontsize=10)
for a in axes.flat:
    a.axis("off")
fig.tight_layout()
show(fig, "ops")

# %% [markdown]
# # 3. A constant guide gives back ordinary convolution
#
# With a constant guide every kernel value is `exp(0) = 1` and the three ops are exactly
# `lax.conv_general_dilated`, `lax.conv_transpose` (of the unflipped filter) and sum pooling.

# %%
key_x, key_w = jax.random.split(jax.random.PRNGKey(0))
feat = jax.random.normal(key_x, (2, 16, 16, 4))  # [B, H, W, Cin]
weight = jax.random.normal(key_w, (5, 5, 4, 8)) / 10  # HWIO


@jax.jit
def pac_vs_plain(feat, weight):
    flat_guide = jnp.zeros(feat.shape[:3] + (3,))
    flat_kernel, _ = ops.pac_kernel(flat_guide, 5, padding=2)
    pac = ops.pac_conv2d(feat, flat_kernel, weight, padding=2)
    conv = lax.conv_general_dilated(feat, weight, (1, 1), [(2, 2), (2, 2)],
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    big_guide = jnp.zeros((feat.shape[0], 2 * feat.shape[1], 2 * feat.shape[2], 3))
    flat_up, _ = ops.pac_kernel(big_guide, 5, stride=2, padding=2, output_padding=1,
                                transposed=True)
    pac_t = ops.pac_conv_transpose2d(feat, flat_up, weight, stride=2, padding=2, output_padding=1)
    conv_t = lax.conv_transpose(feat, weight, (2, 2), [(2, 3), (2, 3)],
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
    flat_pool, _ = ops.pac_kernel(flat_guide, 3, padding=1)
    pac_p = ops.pac_pool2d(feat, flat_pool, kernel_size=3, padding=1)
    sum_pool = lax.reduce_window(feat, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1),
                                 [(0, 0), (1, 1), (1, 1), (0, 0)])
    return {"pac_conv2d vs conv": (pac, conv),
            "pac_conv_transpose2d vs conv_transpose": (pac_t, conv_t),
            "pac_pool2d vs sum pooling": (pac_p, sum_pool)}


for name, (a, b) in pac_vs_plain(feat, weight).items():
    err = float(jnp.max(jnp.abs(a - b)))
    print(f"{name:40s} max |difference| = {err:.1e}  (output scale {float(jnp.abs(b).max()):.1f})")
    assert err < 1e-4 * float(jnp.abs(b).max())

# %% [markdown]
# ## 4. Edge-aware smoothing
#
# Guide = pixel position / `sigma_space` and colour / `sigma_colour`; `pac_pool2d` with the
# normalised kernel is a joint bilateral filter. With `sigma_colour = inf` the colour features
# are all 0 and it is a plain Gaussian blur (the same compiled function serves both). Both use
# the same window (9x9; 5x5 in the tests' small mode) on a noisy copy of the picture.

# %%
def smooth(noisy, sigma_colour, guide_image=None, sigma_space=3.0, size=5 if SMALL else 9):
    """Normalised PAC pooling of `noisy` [H, W, 3], guided by position and colour (of
    `guide_image`, default `noisy` itself). sigma_colour = inf: a plain Gaussian blur."""
    h, w, _ = noisy.shape
    guide_image = noisy if guide_image is None else guide_image
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=noisy.dtype), jnp.arange(w, dtype=noisy.dtype),
                          indexing="ij")
    g = jnp.concatenate([yy[..., None] / sigma_space, xx[..., None] / sigma_space,
                         guide_image / sigma_colour], axis=-1)[None]
    kern, _ = ops.pac_kernel(g, size, padding=size // 2, normalize=True)
    return ops.pac_pool2d(noisy[None], kern, kernel_size=size, padding=size // 2)[0]


def psnr(a, b):
    return -10 * jnp.log10(jnp.mean((a - b) ** 2))


clean = jnp.asarray(image)
noisy = clean + 0.08 * jax.random.normal(jax.random.PRNGKey(1), clean.shape)
smooth_jit = jax.jit(smooth)
gaussian_smoothed = smooth_jit(noisy, jnp.inf)  # colour features all 0: position only
pac_smoothed = smooth_jit(noisy, 0.15)
scores = {name: float(psnr(im, clean)) for name, im in
          [("noisy", noisy), ("Gaussian", gaussian_smoothed), ("PAC", pac_smoothed)]}
print({name: f"{v:.2f} dB" for name, v in scores.items()})

fig, axes = plt.subplots(1, 4, figsize=(13, 3))
for a, (title, im) in zip(axes, [("clean", clean), (f"noisy, {scores['noisy']:.1f} dB", noisy),
                                  (f"Gaussian, {scores['Gaussian']:.1f} dB", gaussian_smoothed),
                                  (f"PAC (bilateral), {scores['PAC']:.1f} dB", pac_smoothed)]):
    a.imshow(np.clip(np.asarray(im), 0, 1))
    a.set_title(title)
    a.axis("off")
fig.tight_layout()
show(fig, "smoothing")

# %% [markdown]
# ## 5. Gradients, `jit` and `vmap`
#
# Every op is differentiable in its input, its filter **and its guide** (hence in anything the
# guide is computed from). Here the colour bandwidth itself is learnt: a few steps of gradient
# descent (Optax Adam) on `log(sigma_colour)` to minimise the error to the clean picture. The
# gradient with respect to a separate guidance image shows where the kernel matters: at edges.

# %%
def loss(log_sigma, guide_image, noisy, clean):
    return jnp.mean((smooth(noisy, jnp.exp(log_sigma), guide_image) - clean) ** 2)


value_and_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
optimizer = optax.adam(0.1)
log_sigma, history = jnp.log(0.5), []
opt_state = optimizer.init(log_sigma)
for step in range(3 if SMALL else 25):
    value, (g, _) = value_and_grads(log_sigma, noisy, noisy, clean)  # guided by itself
    history.append((float(jnp.exp(log_sigma)), float(-10 * jnp.log10(value))))
    updates, opt_state = optimizer.update(g, opt_state)
    log_sigma = optax.apply_updates(log_sigma, updates)
print(f"sigma_colour {history[0][0]:.3f} -> {history[-1][0]:.3f}, "
      f"PSNR {history[0][1]:.2f} -> {history[-1][1]:.2f} dB")

# the same compiled gradient, now with the clean picture as a separate guide
_, (_, guide_grad) = value_and_grads(log_sigma, clean, noisy, clean)
print("d loss / d guide:", guide_grad.shape, "finite:", bool(jnp.all(jnp.isfinite(guide_grad))))

fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
axes[0].plot([h[0] for h in history], [h[1] for h in history], "o-")
axes[0].set_xlabel("sigma_colour")
axes[0].set_ylabel("PSNR (dB)")
axes[0].set_title("gradient descent on the colour bandwidth")
grad_norm = np.linalg.norm(np.asarray(guide_grad), axis=-1)
axes[1].imshow(grad_norm, cmap="magma", vmax=np.percentile(grad_norm, 99))
axes[1].set_title("|d loss / d guidance image|")
axes[1].axis("off")
fig.tight_layout()
show(fig, "gradients")

# %% [markdown]
# `jax.vmap` maps the whole filter over a batch of bandwidths (one compiled program for all of
# them), and `jax.jit` compiles it once: the second call is much faster than the first.

# %%
sigmas = jnp.geomspace(0.02, 1.0, 6 if SMALL else 16)
sweep = jax.jit(jax.vmap(lambda s: psnr(smooth(noisy, s), clean)))
start = time.perf_counter()
curve = sweep(sigmas).block_until_ready()
first = time.perf_counter() - start
start = time.perf_counter()
sweep(sigmas).block_until_ready()
second = time.perf_counter() - start
print(f"{len(sigmas)} bandwidths in one vmapped call: first call (compiles) {first:.2f} s, "
      f"second {second:.3f} s")

fig, ax = plt.subplots(figsize=(5, 3))
ax.semilogx(np.asarray(sigmas), np.asarray(curve), "o-", label="PAC (vmap over sigma_colour)")
ax.axhline(scores["Gaussian"], color="gray", ls="--", label="Gaussian")
ax.axhline(scores["noisy"], color="black", ls=":", label="noisy")
ax.set_xlabel("sigma_colour")
ax.set_ylabel("PSNR (dB)")
ax.legend(fontsize=8)
fig.tight_layout()
show(fig, "vmap_sweep")
