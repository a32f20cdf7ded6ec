"""Random-access sources of joint-upsampling records ``{"image": uint8 [H, W, 3],
"target": float32 [H, W, C]}``: built-in synthetic scenes (depth or flow), NYU Depth v2 through
TensorFlow Datasets (no TensorFlow needed) and MPI Sintel flow in its folder layout with the
original's train/val split file (SPEC_wave2.md 1.8).
"""

from __future__ import annotations

import glob
import os
from typing import Sequence

import numpy as np

__all__ = ["RecordList", "synthetic_source", "nyu_tfds_source", "sintel_source",
           "SINTEL_PASSES"]

SINTEL_PASSES = ("clean", "final", "albedo")


class RecordList:
    """A random-access list of records with a lazy ``read(i)`` (``len`` and ``[i]``)."""

    def __init__(self, n: int, read, names: Sequence[str] | None = None):
        self._n = int(n)
        self._read = read
        self.names = list(names) if names is not None else None

    def __len__(self):
        return self._n

    def __getitem__(self, i):
        if not 0 <= i < self._n:
            raise IndexError(f"record {i} out of range [0, {self._n})")
        return self._read(i)


def synthetic_source(seeds, *, height: int, width: int, task: str = "depth") -> RecordList:
    """Built-in scenes (:func:`ppac_jax.data.synthetic.make_scene`): frame-1 image as uint8
    guide and its exact depth (``[H, W, 1]`` metres) or flow (``[H, W, 2]`` pixels)."""
    from ppac_jax.data.synthetic import make_scene

    if task not in ("depth", "flow"):
        raise ValueError(f"task must be 'depth' or 'flow', got {task!r}")
    records = []
    for seed in seeds:
        scene = make_scene(int(seed), height=height, width=width)
        target = scene["depth"][..., None] if task == "depth" else scene["flow"]
        image = np.round(scene["image1"] * 255).astype(np.uint8)
        records.append({"image": image, "target": target.astype(np.float32)})
    return RecordList(len(records), records.__getitem__)


def nyu_tfds_source(split: str, *, data_dir: str | None = None) -> RecordList:
    """NYU Depth v2 (TFDS ``nyu_depth_v2``: ``image`` uint8 480x640x3, ``depth`` metres) read
    with ``tfds.data_source`` (random access over array_record files; no TensorFlow).

    Raises:
      FileNotFoundError: the prepared dataset is not in ``data_dir`` (TFDS's default when None).
    """
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source("nyu_depth_v2", split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - TFDS raises several kinds for a missing dataset
        raise FileNotFoundError(
            f"nyu_depth_v2 ({split}) not found in {data_dir or 'the TFDS data_dir'}: prepare it "
            f"with tfds (file_format=array_record) or set data_dir ({type(e).__name__})") from None

    def read(i):
        record = source[i]
        depth = np.asarray(record["depth"], np.float32)
        if depth.ndim == 2:
            depth = depth[..., None]
        return {"image": np.asarray(record["image"], np.uint8), "target": depth}

    return RecordList(len(source), read)


def sintel_source(root: str, split_file: str, split: str = "train", *,
                  render_pass: str = "clean") -> RecordList:
    """MPI Sintel training frames with their flow (``datasets.Sintel`` of the original).

    Layout: ``root/training/<pass>/<sequence>/frame_XXXX.png`` and
    ``root/training/flow/<sequence>/frame_XXXX.flo``; samples = the first frame of every
    consecutive pair (every frame of a sequence except its last), sorted by sequence and frame;
    ``split_file`` holds one value per sample, ``1`` = train, ``2`` = val (the original's
    ``Sintel_train_val.txt``).

    Raises:
      FileNotFoundError: missing folders, split file or flow files.
      ValueError: bad ``split`` / ``render_pass``, or a split file whose length differs from
        the number of samples.
    """
    from ppac_jax.data import io

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if render_pass not in SINTEL_PASSES:
        raise ValueError(f"render_pass must be one of {SINTEL_PASSES}, got {render_pass!r}")
    image_root = os.path.join(root, "training", render_pass)
    flow_root = os.path.join(root, "training", "flow")
    for folder in (image_root, flow_root):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"Sintel folder not found: {folder}")
    if not os.path.isfile(split_file):
        raise FileNotFoundError(f"Sintel split file not found: {split_file}")
    samples = []
    for seq in sorted(os.listdir(image_root)):
        frames = sorted(glob.glob(os.path.join(image_root, seq, "*.png")))
        for frame in frames[:-1]:
            stem = os.path.splitext(os.path.basename(frame))[0]
            samples.append((frame, os.path.join(flow_root, seq, stem + ".flo"), f"{seq}/{stem}"))
    values = np.loadtxt(split_file, dtype=np.int64).ravel()
    if len(values) != len(samples):
        raise ValueError(f"{split_file} has {len(values)} entries but {root} has {len(samples)} "
                         f"Sintel samples (frame pairs)")
    keep = [s for s, v in zip(samples, values) if v == (1 if split == "train" else 2)]
    for _, flow, _ in keep:
        if not os.path.isfile(flow):
            raise FileNotFoundError(f"Sintel flow file not found: {flow}")

    def read(i):
        image, flow, _ = keep[i]
        return {"image": io.read_image(image).astype(np.uint8),
                "target": io.read_flo(flow).astype(np.float32)}

    return RecordList(len(keep), read, names=[s[2] for s in keep])
