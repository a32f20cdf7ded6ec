"""Joint upsampling as a training task (NVlabs/pacnet ``task_jointUpsampling/main.py``).

Samples are records ``{"image": [H, W, 3] uint8, "target": [H, W, C] float}`` of a random-access
source (a list, a TFDS data source, ...); every batch is made by
:class:`ppac_jax.data.AssembleJointUpsamplingInputs` exactly as the original does (crop, flip,
low-resolution target, normalisation by the low-resolution range).
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import jax
import numpy as np

from ppac_jax import metrics
from ppac_jax.data.upsampling import AssembleJointUpsamplingInputs
from ppac_jax.losses.upsampling import UPSAMPLING_LOSSES, center_crop, denormalize, upsampling_loss
from ppac_jax.nn.upsample import Bilinear, apply_model

__all__ = ["JointUpsamplingTask", "TASKS"]

TASKS = ("depth", "flow")


class JointUpsamplingTask:
    """Train a joint-upsampling network ``net(low [B,h,w,C], guide [B,H,W,3]) -> [B,H,W,C]``.

    Args:
      make_model: () -> nnx.Module.
      train_source, val_source: random-access sequences of records
        ``{"image": uint8 [H, W, 3], "target": [H, W, C]}``.
      factor: upsampling factor. task: ``"depth"`` (metric RMSE) or ``"flow"`` (EPE).
      batch_size: global batch. crop: square training crop (a multiple of ``factor``).
      loss: ``"l2"``, ``"epe"`` or ``"rmse"`` (SPEC_wave2.md 1.9).
      lowres_mode: see :func:`ppac_jax.data.get_lowres`. eval_border: target pixels removed
        on every side for evaluation.
      seed: data order and crops (batches are a pure function of ``(seed, step)``).
      flip: random horizontal flips in training.
      num_pictures: evaluation panels per evaluation. eval_batch_size: images per prediction.
      index_order: optional ``(step, batch_size) -> indices`` (e.g. a grain sampler);
        default NumPy draws.
    """

    def __init__(self, make_model: Callable, train_source: Sequence, val_source: Sequence, *,
                 factor: int, task: str = "depth", batch_size: int = 8, crop: int = 64,
                 loss: str = "l2", lowres_mode: str = "center", eval_border: int = 0,
                 seed: int = 0, flip: bool = True, num_pictures: int = 4,
                 eval_batch_size: int = 8, index_order: Callable | None = None):
        if task not in TASKS:
            raise ValueError(f"config field task: expected one of {TASKS}, got {task!r}")
        if loss not in UPSAMPLING_LOSSES:
            raise ValueError(f"config field loss: expected one of {UPSAMPLING_LOSSES}, got "
                             f"{loss!r}")
        if len(train_source) == 0 or len(val_source) == 0:
            raise ValueError("the training and validation data must not be empty")
        self.make_model = make_model
        self.train_source = train_source
        self.val_source = val_source
        self.factor = int(factor)
        self.task = task
        self.batch_size = batch_size
        self.crop = int(crop)
        self.loss_type = loss
        self.seed = seed
        self.num_pictures = num_pictures
        self.eval_batch_size = eval_batch_size
        self.index_order = index_order
        self.train_transform = AssembleJointUpsamplingInputs(
            factor, crop=crop, flip=flip, lowres_mode=lowres_mode)
        self.val_transform = AssembleJointUpsamplingInputs(
            factor, lowres_mode=lowres_mode, output_crop=eval_border)
        self.pixels_per_example = self.crop * self.crop
        self.best_metric = ("rmse" if task == "depth" else "epe", "min")

    def init_model(self):
        return self.make_model()

    @staticmethod
    def _stack(samples):
        keys = ("low", "guide", "target", "raw_range")
        return {k: np.stack([s[i] for s in samples]) for i, k in enumerate(keys)}

    def train_batch(self, step: int) -> dict:
        """The global batch of ``step``: a pure function of (seed, step)."""
        rng = np.random.default_rng([self.seed, int(step)])
        if self.index_order is not None:
            indices = self.index_order(step, self.batch_size)
        else:
            indices = rng.integers(0, len(self.train_source), self.batch_size)
        samples = []
        for i in indices:
            record = self.train_source[int(i)]
            samples.append(self.train_transform(record["image"], record["target"], rng=rng))
        return self._stack(samples)

    def _output(self, model, batch):
        out = apply_model(model, batch["low"], batch["guide"], self.factor)
        return center_crop(out, batch["target"].shape[1:3])

    def predict(self, model, batch):
        """De-normalised prediction (raw units), cropped to the target: ``[B, Ht, Wt, C]``."""
        return denormalize(self._output(model, batch), batch["raw_range"])

    def loss(self, model, batch):
        out = self._output(model, batch)
        loss = upsampling_loss(out, batch["target"], batch["raw_range"], self.loss_type)
        raw = denormalize(out, batch["raw_range"])
        measure = (metrics.upsampling_rmse(raw, batch["target"]) if self.task == "depth"
                   else metrics.upsampling_epe(raw, batch["target"]))
        return loss, {self.best_metric[0]: measure}

    def _val_batches(self):
        n = len(self.val_source)
        for start in range(0, n, self.eval_batch_size):
            samples = []
            for i in range(start, min(n, start + self.eval_batch_size)):
                record = self.val_source[i]
                samples.append(self.val_transform(record["image"], record["target"]))
            yield self._stack(samples)

    def bilinear(self, batch):
        """The bilinear baseline of a batch (raw units, cropped as :meth:`predict`)."""
        return np.asarray(self.predict(Bilinear(self.factor), batch))

    def _measure(self, pred, target):
        pred = np.asarray(pred, np.float64)
        target = np.asarray(target, np.float64)
        if self.task == "depth":
            return [float(metrics.upsampling_rmse(p[None], t[None])) for p, t in zip(pred, target)]
        return [float(metrics.upsampling_epe(p[None], t[None])) for p, t in zip(pred, target)]

    def evaluate(self, predict, step: int, workdir: str | None) -> dict:
        """Mean per-image RMSE (depth) or EPE (flow) of the network and of bilinear upsampling
        on the validation data; writes picture panels."""
        name = self.best_metric[0]
        ours, base = [], []
        seen = 0
        write = workdir is not None and jax.process_index() == 0
        for batch in self._val_batches():
            pred = np.asarray(predict(batch), np.float32)
            bil = self.bilinear(batch)
            ours += self._measure(pred, batch["target"])
            base += self._measure(bil, batch["target"])
            for i in range(len(pred)):
                if write and seen + i < self.num_pictures:
                    self._panel(workdir, step, seen + i, batch, i, bil[i], pred[i])
            seen += len(pred)
        value, baseline = float(np.mean(ours)), float(np.mean(base))
        return {name: value, f"{name}_bilinear": baseline,
                "improvement": (baseline - value) / baseline if baseline > 0 else 0.0}

    def _panel(self, workdir, step, index, batch, i, bilinear, pred):
        from ppac_jax import viz

        target = batch["target"][i]
        guide = center_crop(batch["guide"][i:i + 1], target.shape[:2])[0]
        low = denormalize(batch["low"][i:i + 1], batch["raw_range"][i:i + 1])[0]
        low = np.repeat(np.repeat(np.asarray(low), self.factor, 0), self.factor, 1)
        low = center_crop(low[None], target.shape[:2])[0]
        if self.task == "flow":
            max_flow = float(np.max(np.linalg.norm(target, axis=-1), initial=1.0))
            show = [viz.flow_to_color(x, max_flow=max_flow) for x in (low, bilinear, pred, target)]
            err = viz.error_map(pred, target)
        else:
            lo, hi = float(target.min()), float(target.max())
            scale = max(hi - lo, 1e-6)
            show = [np.clip((x[..., 0] - lo) / scale, 0, 1) for x in (low, bilinear, pred, target)]
            err = np.clip(np.abs(pred[..., 0] - target[..., 0]) / (0.1 * scale), 0, 1)
        m = self._measure(np.stack([bilinear, pred]), np.stack([target, target]))
        name = self.best_metric[0].upper()
        images = [guide] + show + [err]
        titles = ["guide", f"low-res x{self.factor}", f"bilinear {name} {m[0]:.3g}",
                  f"prediction {name} {m[1]:.3g}", "ground truth", "error"]
        zoom = max(1, -(-160 // target.shape[1]))
        if zoom > 1:
            images = [np.repeat(np.repeat(viz.to_uint8_image(im), zoom, 0), zoom, 1)
                      for im in images]
        path = os.path.join(workdir, "pictures", f"step_{step:06d}", f"sample_{index:02d}.png")
        viz.save_panel(path, images, titles, columns=3)
