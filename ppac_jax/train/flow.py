"""Flow refinement as a training task: PPacNet-style model on (estimate, confidences, image)."""

from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np

from ppac_jax import metrics as flow_metrics
from ppac_jax.data.transforms import log_confidence, normalize_imagenet, random_crop_batch
from ppac_jax.losses import epe_loss

__all__ = ["FlowRefinementTask", "model_inputs"]


def model_inputs(samples: dict) -> dict:
    """Numpy network inputs from dataset arrays [B,H,W,...] (``estimate``, ``log_probabilities``,
    ``images``; plus ``flow``/``valid`` when present)."""
    out = {"estimate": np.asarray(samples["estimate"], np.float32),
           "log_probabilities": log_confidence(samples["confidence"]),
           "images": normalize_imagenet(samples["image1"])}
    if "flow" in samples:
        out["flow"] = np.asarray(samples["flow"], np.float32)
        out["valid"] = np.asarray(samples["valid"], np.float32)
    return out


class FlowRefinementTask:
    """Train a refinement net ``net(estimate, log_probabilities, images) -> flow``.

    Args:
      make_model: () -> nnx.Module.
      train_data: stacked dataset dict [N, H, W, ...] (see ppac_jax.data.datasets).
      val_data: stacked dict or a list of per-sample dicts (sizes may differ).
      batch_size: global batch. crop: (h, w) training crop. seed: data-order seed.
      num_pictures: evaluation panels written per evaluation.
      eval_batch_size: images per prediction call (stacked validation data).
    """

    def __init__(self, make_model: Callable, train_data: dict, val_data, *, batch_size: int,
                 crop: tuple[int, int], seed: int = 0, num_pictures: int = 4,
                 eval_batch_size: int = 8, flip: bool = True):
        self.make_model = make_model
        self.train_data = {k: train_data[k] for k in
                           ("image1", "flow", "valid", "estimate", "confidence")}
        self.val_data = val_data
        self.batch_size = batch_size
        self.crop = tuple(crop)
        self.seed = seed
        self.flip = flip
        self.num_pictures = num_pictures
        self.eval_batch_size = eval_batch_size
        self.pixels_per_example = self.crop[0] * self.crop[1]

    best_metric = ("aee", "min")
    # the guidance and probability branches may train with their own learning rate
    branch_names = ("network_guidance", "network_prob")

    def init_model(self):
        return self.make_model()

    def train_batch(self, step: int) -> dict:
        """The global batch of ``step``: a pure function of (seed, step)."""
        rng = np.random.default_rng([self.seed, int(step)])
        crops = random_crop_batch(self.train_data, rng, batch_size=self.batch_size,
                                  crop=self.crop, flip=self.flip)
        return model_inputs(crops)

    def predict(self, model, batch):
        return model(batch["estimate"], batch["log_probabilities"], batch["images"])

    def loss(self, model, batch):
        pred = self.predict(model, batch)
        loss = epe_loss(pred, batch["flow"], batch["valid"])
        input_epe = epe_loss(batch["estimate"], batch["flow"], batch["valid"])
        return loss, {"input_epe": input_epe}

    def _val_batches(self):
        data = self.val_data
        if isinstance(data, dict):
            n = len(data["flow"])
            for i in range(0, n, self.eval_batch_size):
                yield {k: data[k][i:i + self.eval_batch_size] for k in
                       ("image1", "flow", "valid", "estimate", "confidence")}
        else:
            for s in data:
                yield {k: np.asarray(s[k])[None] for k in
                       ("image1", "flow", "valid", "estimate", "confidence")}

    def refine_all(self, predict):
        """Yield (samples, refined [B,H,W,2]) over the validation data."""
        for samples in self._val_batches():
            yield samples, np.asarray(predict(model_inputs(samples)), np.float32)

    def evaluate(self, predict, step: int, workdir: str | None) -> dict:
        """AEE / outlier rate of the input estimate and of the refined flow; writes panels."""
        epe_in, epe_out, fl_in, fl_out = [], [], [], []
        seen = 0
        write = workdir is not None and jax.process_index() == 0
        for samples, refined in self.refine_all(predict):
            gt, valid, est = samples["flow"], samples["valid"].astype(bool), samples["estimate"]
            epe_in.append(np.asarray(flow_metrics.epe(est, gt, valid)))
            epe_out.append(np.asarray(flow_metrics.epe(refined, gt, valid)))
            fl_in.append(np.asarray(flow_metrics.outlier_rate(est, gt, valid)))
            fl_out.append(np.asarray(flow_metrics.outlier_rate(refined, gt, valid)))
            for i in range(len(gt)):
                if write and seen + i < self.num_pictures:
                    self._panel(workdir, step, seen + i, samples["image1"][i], est[i],
                                refined[i], gt[i], valid[i])
            seen += len(gt)
        aee_in, aee_out = flow_metrics.aee(epe_in), flow_metrics.aee(epe_out)
        return {"aee_input": aee_in, "aee": aee_out,
                "outliers_input": float(np.nanmean(np.concatenate(fl_in))),
                "outliers": float(np.nanmean(np.concatenate(fl_out))),
                "improvement": (aee_in - aee_out) / aee_in if aee_in > 0 else 0.0}

    @staticmethod
    def _panel(workdir, step, index, image, est, refined, gt, valid):
        from ppac_jax import viz

        max_flow = float(np.max(np.linalg.norm(gt[valid], axis=-1), initial=1.0))
        e_in = float(flow_metrics.epe(est, gt, valid))
        e_out = float(flow_metrics.epe(refined, gt, valid))
        images = [image, viz.flow_to_color(gt, max_flow=max_flow, valid=valid),
                  viz.flow_to_color(est, max_flow=max_flow), viz.flow_to_color(refined, max_flow=max_flow),
                  viz.error_map(est, gt, valid), viz.error_map(refined, gt, valid)]
        titles = ["image", "ground truth", f"input EPE {e_in:.2f}", f"refined EPE {e_out:.2f}",
                  "input error", "refined error"]
        scale = max(1, -(-160 // image.shape[1]))  # small images: enlarge so titles fit
        if scale > 1:
            images = [np.repeat(np.repeat(viz.to_uint8_image(im), scale, 0), scale, 1)
                      for im in images]
        path = os.path.join(workdir, "pictures", f"step_{step:06d}", f"sample_{index:02d}.png")
        viz.save_panel(path, images, titles, columns=2)
