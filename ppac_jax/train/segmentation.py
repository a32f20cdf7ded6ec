"""Segmentation refinement as a training task: a model maps (image, input logits) to logits.

The task is generic over *how* the model uses its inputs (``forward``) and *what* it is trained
with (``loss_fn``), so PPAC refinement, a PAC-CRF on top of logits, or a network that ignores
the input logits share the data pipeline, the evaluation (streaming confusion matrices of the
input and the refined logits, mIoU / pixel accuracy / mean class accuracy) and the pictures.

A batch is a dict of numpy arrays: ``image`` ``[B, H, W, 3]`` float32 RGB in [0, 1],
``logits`` ``[B, H, W, C]`` float32 input logits, ``labels`` ``[B, H, W]`` int32 (class in
``[0, C)`` or ``ignore_label``).
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from ppac_jax import metrics as seg_metrics

__all__ = ["SegmentationTask", "random_crop_samples", "KEYS"]

KEYS = ("image", "logits", "labels")


def _pad_to(array, height, width, value):
    h, w = array.shape[:2]
    if h >= height and w >= width:
        return array
    pad = [(0, max(0, height - h)), (0, max(0, width - w))] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, constant_values=value)


def random_crop_samples(samples, rng: np.random.Generator, *, batch_size: int,
                        crop: tuple[int, int], flip: bool, ignore_label: int = 255) -> dict:
    """A batch of random ``crop`` windows from stacked arrays or a list of per-sample dicts.

    Samples smaller than the crop are padded at the bottom/right (image and logits with 0,
    labels with ``ignore_label``), as DeepLab's ``pad_label`` inputs. Returns the batch dict.
    """
    n = len(samples["labels"]) if isinstance(samples, dict) else len(samples)
    ch, cw = crop
    idx = rng.integers(0, n, batch_size)
    flips = rng.uniform(size=batch_size) < 0.5 if flip else np.zeros(batch_size, bool)
    offsets = rng.uniform(size=(batch_size, 2))
    out = {k: [] for k in KEYS}
    for i, f, (oy, ox) in zip(idx, flips, offsets):
        item = ({k: samples[k][i] for k in KEYS} if isinstance(samples, dict) else samples[i])
        h, w = item["labels"].shape
        y = int(oy * (max(h - ch, 0) + 1))
        x = int(ox * (max(w - cw, 0) + 1))
        for k in KEYS:
            win = item[k][y:y + ch, x:x + cw]
            win = _pad_to(win, ch, cw, ignore_label if k == "labels" else 0)
            out[k].append(win[:, ::-1] if f else win)
    return {"image": np.stack(out["image"]).astype(np.float32),
            "logits": np.stack(out["logits"]).astype(np.float32),
            "labels": np.stack(out["labels"]).astype(np.int32)}


class SegmentationTask:
    """Train a model on ``(image, input logits) -> refined logits``.

    Args:
      make_model: ``() -> nnx.Module``.
      forward: ``(model, batch) -> logits [B, H, W, C]`` (how image and input logits enter).
      loss_fn: ``(model, logits, batch) -> (scalar, aux dict)``.
      train_data: stacked dict ``[N, H, W, ...]`` with ``KEYS`` or a list of per-sample dicts.
      val_data: the same (a list when sizes differ); samples may carry a ``name``.
      num_classes: C. batch_size: global batch. crop: (h, w) training crop.
      seed: data-order seed. flip: random horizontal flips. ignore_label: void label.
      num_pictures: validation pictures written per evaluation.
      eval_batch_size: images per prediction call (stacked validation data).
      make_optimizer: optional ``params -> optax.GradientTransformation`` (parameter groups,
        frozen parts); without it the loop's Adam of ``TrainConfig.optim`` is used.
      class_names: optional names for the per-class IoU of the evaluation.
      boundary_width: the evaluation's ``boundary_miou`` counts pixels within this many pixels
        of a ground-truth boundary (``metrics.boundary_band``).
    """

    best_metric = ("miou", "max")

    def __init__(self, make_model: Callable, forward: Callable, loss_fn: Callable, train_data,
                 val_data, *, num_classes: int, batch_size: int, crop: Sequence[int],
                 seed: int = 0, flip: bool = True, ignore_label: int = 255,
                 num_pictures: int = 4, eval_batch_size: int = 4,
                 make_optimizer: Optional[Callable] = None,
                 class_names: Optional[Sequence[str]] = None, boundary_width: int = 3):
        self.make_model = make_model
        self.forward = forward
        self.loss_fn = loss_fn
        self.train_data = train_data
        self.val_data = val_data
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.crop = tuple(int(c) for c in crop)
        self.seed = seed
        self.flip = flip
        self.ignore_label = ignore_label
        self.num_pictures = num_pictures
        self.eval_batch_size = eval_batch_size
        self.class_names = tuple(class_names) if class_names else None
        self.boundary_width = int(boundary_width)
        self.pixels_per_example = self.crop[0] * self.crop[1]
        if make_optimizer is not None:
            self.make_optimizer = make_optimizer

    def init_model(self):
        return self.make_model()

    def train_batch(self, step: int) -> dict:
        """The global batch of ``step``: a pure function of (seed, step)."""
        rng = np.random.default_rng([self.seed, int(step)])
        batch = random_crop_samples(self.train_data, rng, batch_size=self.batch_size,
                                    crop=self.crop, flip=self.flip, ignore_label=self.ignore_label)
        # per example, so it shards like the rest: losses with a step schedule (AAF's decay)
        batch["step"] = np.full(self.batch_size, step, np.int32)
        return batch

    def predict(self, model, batch):
        return self.forward(model, batch)

    def loss(self, model, batch):
        logits = self.forward(model, batch)
        return self.loss_fn(model, logits, batch)

    def _val_batches(self):
        data = self.val_data
        if isinstance(data, dict):
            n = len(data["labels"])
            for i in range(0, n, self.eval_batch_size):
                yield {k: data[k][i:i + self.eval_batch_size] for k in KEYS}
        else:
            for s in data:
                yield {k: np.asarray(s[k])[None] for k in KEYS}

    @staticmethod
    def _inputs(samples):
        return {"image": np.asarray(samples["image"], np.float32),
                "logits": np.asarray(samples["logits"], np.float32),
                "labels": np.asarray(samples["labels"], np.int32)}

    def refine_all(self, predict):
        """Yield ``(samples, refined logits [B, H, W, C])`` over the validation data."""
        for samples in self._val_batches():
            yield samples, np.asarray(predict(self._inputs(samples)), np.float32)

    def evaluate(self, predict, step: int, workdir: str | None) -> dict:
        """mIoU, pixel accuracy and mean class accuracy of the input and the refined logits
        (streaming confusion matrices over the validation set); writes picture panels."""
        before = seg_metrics.ConfusionMatrix(self.num_classes)
        after = seg_metrics.ConfusionMatrix(self.num_classes)
        band_before = seg_metrics.ConfusionMatrix(self.num_classes)
        band_after = seg_metrics.ConfusionMatrix(self.num_classes)
        seen = 0
        write = workdir is not None and jax.process_index() == 0
        for samples, refined in self.refine_all(predict):
            labels = np.asarray(samples["labels"])
            pred_in = np.argmax(samples["logits"], -1)
            pred_out = np.argmax(refined, -1)
            before.update(pred_in, labels)
            after.update(pred_out, labels)
            band = np.asarray(seg_metrics.boundary_band(labels, width=self.boundary_width))
            band_before.update(pred_in, labels, valid=band)
            band_after.update(pred_out, labels, valid=band)
            for i in range(len(labels)):
                if write and seen + i < self.num_pictures:
                    self._panel(workdir, step, seen + i, samples["image"][i], pred_in[i],
                                pred_out[i], labels[i])
            seen += len(labels)
        out = {"miou_input": before.miou(), "miou": after.miou(),
               "pixel_accuracy_input": before.pixel_accuracy(),
               "pixel_accuracy": after.pixel_accuracy(),
               "mean_class_accuracy_input": before.mean_class_accuracy(),
               "mean_class_accuracy": after.mean_class_accuracy()}
        out["miou_gain"] = out["miou"] - out["miou_input"]
        if band_after.matrix.any():  # mIoU within boundary_width px of the true boundaries
            out["boundary_miou_input"] = band_before.miou()
            out["boundary_miou"] = band_after.miou()
        if self.class_names:
            for name, iou in zip(self.class_names, after.iou()):
                if np.isfinite(iou):
                    out[f"iou_{name}"] = float(iou)
        return out

    def _panel(self, workdir, step, index, image, pred_in, pred_out, labels):
        from ppac_jax import viz

        valid = labels != self.ignore_label
        acc_in = float(np.mean(pred_in[valid] == labels[valid])) if valid.any() else float("nan")
        acc_out = float(np.mean(pred_out[valid] == labels[valid])) if valid.any() else float("nan")
        images = [image, viz.label_to_color(labels), viz.label_to_color(pred_in),
                  viz.label_to_color(pred_out), segmentation_error_map(pred_in, labels,
                                                                      self.ignore_label),
                  segmentation_error_map(pred_out, labels, self.ignore_label)]
        titles = ["image", "ground truth", f"baseline acc {acc_in:.3f}",
                  f"refined acc {acc_out:.3f}", "baseline errors", "refined errors"]
        scale = max(1, -(-160 // image.shape[1]))  # small images: enlarge so titles fit
        if scale > 1:
            images = [np.repeat(np.repeat(viz.to_uint8_image(im), scale, 0), scale, 1)
                      for im in images]
        path = os.path.join(workdir, "pictures", f"step_{step:06d}", f"sample_{index:02d}.png")
        viz.save_panel(path, images, titles, columns=2)


def segmentation_error_map(pred, labels, ignore_label: int = 255) -> np.ndarray:
    """``[H, W, 3]`` uint8: wrong pixels in the VOC colour of the *predicted* class, correct
    ones black, void pixels in the VOC void colour."""
    from ppac_jax.data.io import voc_palette

    palette = voc_palette()
    pred = np.asarray(pred)
    labels = np.asarray(labels)
    out = np.zeros(labels.shape + (3,), np.uint8)
    wrong = (pred != labels) & (labels != ignore_label)
    out[wrong] = palette[np.clip(pred[wrong], 0, 255)]
    out[labels == ignore_label] = palette[255]
    return out
