"""A small convolutional segmenter whose upsampled logits PPAC refines (a stand-in for DeepLab).

The network sees the image through two stride-2 convolutions and works at 1/4 resolution
with dilated convolutions (DeepLab's output stride, scaled to small images); its class logits
are bilinearly upsampled to full resolution (``align_corners=False``, as DeepLab's logits in
PPAC's paper). It is trained briefly with cross entropy (void pixels ignored) on scenes of its
own, so its mistakes on other scenes come from real causes: boundaries blurred by the 4x
upsampling, textures that the stride-4 features cannot tell apart, thin parts lost at low
resolution.

    segmenter, report = train_segmenter(images, labels, num_classes=6)
    logits = predict_logits(segmenter, images)      # [N, H, W, C] float32, full resolution
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ppac_jax.data.transforms import normalize_imagenet
from ppac_jax.losses.segmentation import cross_entropy
from ppac_jax.nn.layers import Conv2d
from ppac_jax.ops.resample import resize_bilinear

__all__ = ["SegmenterConfig", "TinySegmenter", "train_segmenter", "predict_logits"]


@dataclasses.dataclass(frozen=True)
class SegmenterConfig:
    """Width of the network, training steps, batch, learning rate and seeds."""

    width: int = 24
    steps: int = 400
    batch_size: int = 16
    lr: float = 3e-3
    seed: int = 0


class TinySegmenter(nnx.Module):
    """Stride-4 conv segmenter: ``net(images [B, H, W, 3]) -> logits [B, H, W, C]``.

    Two stride-2 3x3 convs (3 -> w/2 -> w), three dilated 3x3 convs (dilation 1, 2, 4) at 1/4
    resolution, a 1x1 classifier, ReLU between, then bilinear upsampling to ``[H, W]``.
    ``H`` and ``W`` must be divisible by 4. Images are ImageNet-normalised RGB.
    """

    def __init__(self, num_classes: int, width: int = 24, *, rngs: Optional[nnx.Rngs] = None,
                 param_dtype=jnp.float32):
        rngs = nnx.Rngs(0) if rngs is None else rngs
        half = max(width // 2, 1)
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.num_classes = num_classes
        self.layers = nnx.List([
            Conv2d(3, half, 3, stride=2, padding=1, **kw),
            Conv2d(half, width, 3, stride=2, padding=1, **kw),
            Conv2d(width, width, 3, padding=1, **kw),
            Conv2d(width, width, 3, padding=2, dilation=2, **kw),
            Conv2d(width, width, 3, padding=4, dilation=4, **kw),
        ])
        self.classifier = Conv2d(width, num_classes, 1, **kw)

    def low_resolution_logits(self, images):
        x = images
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.classifier(x)

    def __call__(self, images):
        if images.ndim != 4 or images.shape[1] % 4 or images.shape[2] % 4:
            raise ValueError(f"images: expected [B, H, W, 3] with H, W divisible by 4, got "
                             f"{images.shape}")
        low = self.low_resolution_logits(images)
        return resize_bilinear(low, images.shape[1:3])  # PyTorch align_corners=False


@functools.lru_cache(maxsize=None)
def _step_fn(graphdef, tx):
    @jax.jit
    def step(params, opt_state, images, labels):
        def loss_fn(p):
            return cross_entropy(nnx.merge(graphdef, p)(images), labels, ignore_label=255)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


@functools.lru_cache(maxsize=None)
def _predict_fn(graphdef):
    return jax.jit(lambda params, images: nnx.merge(graphdef, params)(images))


def train_segmenter(images, labels, *, num_classes: int, config: SegmenterConfig | None = None,
                    log: Callable[[str], None] | None = None):
    """Train a :class:`TinySegmenter` on ``images [N, H, W, 3]`` (float in [0, 1]) and
    ``labels [N, H, W]`` (class or 255) with Adam; returns ``(segmenter, final_loss)``.

    Batches are drawn with replacement from a generator seeded by ``config.seed``: the result is
    deterministic for fixed inputs (on one machine).
    """
    config = config or SegmenterConfig()
    images = normalize_imagenet(images)
    labels = np.asarray(labels, np.int32)
    net = TinySegmenter(num_classes, config.width, rngs=nnx.Rngs(config.seed))
    graphdef, params = nnx.split(net)
    tx = optax.adam(optax.cosine_decay_schedule(config.lr, config.steps, alpha=0.05))
    opt_state = tx.init(params)
    step = _step_fn(graphdef, tx)
    rng = np.random.default_rng(config.seed)
    loss = float("nan")
    for s in range(config.steps):
        idx = rng.integers(0, len(images), config.batch_size)
        flip = rng.uniform(size=config.batch_size) < 0.5
        batch_images = np.where(flip[:, None, None, None], images[idx, :, ::-1], images[idx])
        batch_labels = np.where(flip[:, None, None], labels[idx, :, ::-1], labels[idx])
        params, opt_state, loss = step(params, opt_state, batch_images, batch_labels)
        if log and (s + 1) % max(config.steps // 4, 1) == 0:
            log(f"baseline segmenter: step {s + 1}/{config.steps}, loss {float(loss):.3f}")
    return nnx.merge(graphdef, params), float(loss)


def predict_logits(segmenter: TinySegmenter, images, *, chunk: int = 16) -> np.ndarray:
    """Full-resolution logits ``[N, H, W, C]`` float32 of ``images [N, H, W, 3]`` in [0, 1]."""
    graphdef, params = nnx.split(segmenter)
    fn = _predict_fn(graphdef)
    images = normalize_imagenet(images)
    out = []
    for i in range(0, len(images), chunk):
        part = images[i:i + chunk]
        pad = chunk - len(part)
        if pad:
            part = np.concatenate([part, np.repeat(part[-1:], pad, 0)])
        out.append(np.asarray(fn(params, part), np.float32)[:chunk - pad])
    return np.concatenate(out)
