"""Segmentation refinement datasets: built-in scenes with a trained baseline, and VOC layout.

Every sample has ``image`` ``[H, W, 3]`` float32 RGB in [0, 1], ``labels`` ``[H, W]`` uint8
(class in ``[0, C)`` or 255 = void) and ``logits`` ``[H, W, C]`` float32 (the input
segmentation to refine, at full resolution). Synthetic data is stacked (``[N, ...]`` arrays);
files on disk give a list of per-sample dicts (sizes differ) that also carry ``name``.

On disk (PPAC's segmentation layout, SPEC_wave2 3.2): a list file whose lines are either
``<image path> <label path>`` relative to ``root`` or a VOC image id (``2007_000033`` ->
``JPEGImages/<id>.jpg`` and ``SegmentationClass/<id>.png``); the logits of an image are
``<logits_root>/<image path without extension>.npy``, ``[H, W, C]`` float (DeepLab logits
bilinearly upsampled to the image size).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Callable, Optional

import numpy as np

from ppac_jax.data import io
from ppac_jax.data.segmentation_baseline import SegmenterConfig, predict_logits, train_segmenter
from ppac_jax.data.segmentation_scenes import SegmentationSceneConfig, make_segmentation_scenes

__all__ = ["check_sample", "logits_path", "read_segmentation_list", "synthetic_segmentation_data",
           "voc_segmentation_dataset", "KEYS"]

KEYS = ("image", "labels", "logits")
VOID = 255


def check_sample(sample: dict, *, num_classes: int, name: str = "sample") -> dict:
    """Validate one sample's shapes and label values; returns it.

    Raises:
      ValueError: one line naming ``name`` (the file) and what is wrong: image not
        ``[H, W, 3]``, labels or logits of another size, logits with a channel count other than
        ``num_classes``, non-finite logits, labels outside ``[0, num_classes) ∪ {255}``.
    """
    image, labels, logits = sample["image"], sample["labels"], sample["logits"]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name}: image must be [H, W, 3], got {image.shape}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"{name}: labels of size {labels.shape} do not match the image size "
                         f"{image.shape[:2]}")
    if logits.ndim != 3 or logits.shape[:2] != image.shape[:2]:
        raise ValueError(f"{name}: logits of shape {logits.shape} do not match the image size "
                         f"{image.shape[:2]} (expected [H, W, {num_classes}] at full resolution)")
    if logits.shape[-1] != num_classes:
        raise ValueError(f"{name}: logits have {logits.shape[-1]} classes, expected {num_classes}")
    if not np.isfinite(logits).all():
        raise ValueError(f"{name}: logits contain NaN or inf")
    bad = (labels != VOID) & (labels >= num_classes)
    if bad.any():
        values = sorted(set(np.unique(labels[bad]).tolist()))[:5]
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}) or be 255 (void), found "
                         f"{values}")
    return sample


def logits_path(logits_root: str, image_relative: str) -> str:
    """``<logits_root>/<image path without extension>.npy``."""
    return os.path.join(logits_root, os.path.splitext(image_relative)[0] + ".npy")


def read_segmentation_list(list_file: str, *, root: Optional[str] = None
                           ) -> list[tuple[str, str, str]]:
    """``(image path, label path, image path as listed)`` joined with ``root`` (default: the
    list's folder).

    Lines: ``<image> <label>`` paths, or one VOC id (``JPEGImages/<id>.jpg``,
    ``SegmentationClass/<id>.png``).
    """
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"list file not found: {list_file}")
    root = os.path.dirname(os.path.abspath(list_file)) if root is None else root
    pairs = []
    with open(list_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) == 1:
                fields = [f"JPEGImages/{fields[0]}.jpg", f"SegmentationClass/{fields[0]}.png"]
            if len(fields) != 2:
                raise ValueError(f"{list_file}:{number}: expected '<image> <label>' or a VOC id, "
                                 f"got {len(fields)} fields")
            pairs.append((fields[0].lstrip("/"), fields[1].lstrip("/")))
    if not pairs:
        raise ValueError(f"{list_file}: no samples listed")
    return [(os.path.join(root, a), os.path.join(root, b), a) for a, b in pairs]


def voc_segmentation_dataset(list_file: str, *, logits_root: str, num_classes: int = 21,
                             root: Optional[str] = None) -> list[dict]:
    """Read a VOC-layout list with its baseline logits (a list of per-sample dicts).

    Raises:
      FileNotFoundError: the list, an image, a label PNG or a logits file is missing (named).
      ValueError: a sample fails :func:`check_sample` (named by its file).
    """
    samples = []
    for image_path, label_path, relative in read_segmentation_list(list_file, root=root):
        for path in (image_path, label_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{list_file}: file not found: {path}")
        npy = logits_path(logits_root, relative)
        if not os.path.isfile(npy):
            raise FileNotFoundError(f"logits file not found: {npy} (expected "
                                    f"<logits_root>/<image path without extension>.npy)")
        logits = io.read_hd3_estimate(npy)
        sample = {"image": io.read_image(image_path).astype(np.float32) / 255.0,
                  "labels": io.read_label_png(label_path), "logits": logits,
                  "name": os.path.splitext(relative)[0]}
        check_sample(sample, num_classes=num_classes, name=npy)
        samples.append(sample)
    return samples


def _digest(*parts) -> str:
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:16]


def synthetic_segmentation_data(*, height: int, width: int, num_segmenter_scenes: int,
                                num_train_scenes: int, num_val_scenes: int, data_seed: int = 0,
                                scene_config: SegmentationSceneConfig | None = None,
                                segmenter: SegmenterConfig | None = None,
                                cache_dir: Optional[str] = None,
                                log: Optional[Callable[[str], None]] = None):
    """Built-in scenes plus the baseline segmenter's logits: ``(train, val, info)``.

    Three disjoint seed ranges: the baseline :class:`TinySegmenter` is trained on
    ``num_segmenter_scenes`` scenes; its logits on ``num_train_scenes`` other scenes are the
    refinement training data and on ``num_val_scenes`` more the held-out evaluation data, so
    the logits to refine carry the mistakes the baseline makes on unseen images. With
    ``cache_dir`` everything is stored in an ``.npz`` named by a hash of every setting.

    Returns:
      ``train`` and ``val`` dicts of stacked arrays (``KEYS``), ``info`` dict (``num_classes``,
      ``class_names``, the baseline's final training loss, ``segmenter``: the trained baseline
      :class:`TinySegmenter` itself, for methods that build on it).
    """
    scene_config = scene_config or SegmentationSceneConfig()
    segmenter = segmenter or SegmenterConfig()
    first = data_seed * 1_000_000
    seeds = {"segmenter": range(first + 600_000, first + 600_000 + num_segmenter_scenes),
             "train": range(first, first + num_train_scenes),
             "val": range(first + 900_000, first + 900_000 + num_val_scenes)}
    num_classes = len(scene_config.classes)
    info = {"num_classes": num_classes,
            "class_names": [c.name for c in scene_config.classes]}
    path = None
    if cache_dir:
        key = _digest(height, width, {k: (v.start, v.stop) for k, v in seeds.items()},
                      repr(scene_config), dataclasses.astuple(segmenter), 2)
        path = os.path.join(cache_dir, f"segmentation_{height}x{width}_{key}.npz")
        if os.path.exists(path):
            with np.load(path) as f:
                train = {k: f["train_" + k] for k in KEYS}
                val = {k: f["val_" + k] for k in KEYS}
                info["baseline_loss"] = float(f["baseline_loss"])
                info["segmenter"] = _segmenter_from_arrays(
                    f, num_classes, segmenter.width)
            if log:
                log(f"read cached scenes and baseline logits from {path}")
            return train, val, info
    if log:
        log(f"generating {sum(len(s) for s in seeds.values())} segmentation scenes of "
            f"{height}x{width} ({num_classes} classes)")
    scenes = {k: make_segmentation_scenes(v, height=height, width=width, config=scene_config)
              for k, v in seeds.items()}
    net, loss = train_segmenter(scenes["segmenter"]["image"], scenes["segmenter"]["labels"],
                                num_classes=num_classes, config=segmenter, log=log)
    info["baseline_loss"] = loss
    info["segmenter"] = net
    out = []
    for split in ("train", "val"):
        s = scenes[split]
        out.append({"image": s["image"], "labels": s["labels"],
                    "logits": predict_logits(net, s["image"])})
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, baseline_loss=loss, **{f"train_{k}": v for k, v in out[0].items()},
                 **{f"val_{k}": v for k, v in out[1].items()}, **_segmenter_arrays(net))
        os.replace(tmp, path)
        if log:
            log(f"cached scenes and baseline logits in {path}")
    return out[0], out[1], info



def _segmenter_arrays(net) -> dict:
    """The baseline's parameters as ``{"segmenter/<path>": array}`` (for the cache file)."""
    from flax import nnx

    return {"segmenter/" + "/".join(map(str, path)): np.asarray(v.get_value())
            for path, v in nnx.to_flat_state(nnx.state(net, nnx.Param))}


def _segmenter_from_arrays(f, num_classes: int, width: int):
    from flax import nnx

    from ppac_jax.data.segmentation_baseline import TinySegmenter

    net = TinySegmenter(num_classes, width)
    for path, v in nnx.to_flat_state(nnx.state(net, nnx.Param)):
        v.set_value(np.asarray(f["segmenter/" + "/".join(map(str, path))]))
    return net
