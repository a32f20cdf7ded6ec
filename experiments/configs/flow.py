"""Presets of ``python -m experiments.train_flow``.

``smoke``: seconds, for tests. ``default``: synthetic scenes, <= 10 minutes on 2 CPU cores.
``sintel`` / ``kitti``: HD3-layout data on disk (set ``data_root`` / ``estimates_root`` /
``train_list`` / ``val_list``), full-resolution evaluation; hyper-parameters are starting points.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

__all__ = ["FlowConfig", "PRESETS", "get_config"]


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    # data
    dataset: str = "synthetic"  # synthetic | tfds (same scenes via array_record) | lists
    height: int = 96  # synthetic scene size (divisible by 16)
    width: int = 128
    num_train_scenes: int = 256
    num_val_scenes: int = 32
    data_seed: int = 0
    data_root: Optional[str] = None  # lists: root the list paths are relative to
    estimates_root: Optional[str] = None  # lists: HD3 .npy estimates / _prob.npy confidences
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    missing_confidence: str = "error"  # lists: "error" or "uniform"
    tfds_data_dir: Optional[str] = None  # tfds: default WORKDIR/tfds
    # training
    steps: int = 300
    batch_size: int = 8  # global, over all devices
    crop: tuple[int, int] = (48, 48)
    flip: bool = True
    lr: float = 2e-3
    branch_lr: Optional[float] = None  # guidance/probability branches (None: = lr)
    milestones: tuple[int, ...] = (200, 260)
    gamma: float = 0.5
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 100
    checkpoint_every: int = 100
    log_every: int = 10
    eval_batch_size: int = 8
    num_pictures: int = 4
    # model (PPacNet, SPEC §2); depth_layers_prob[0] must equal the confidence levels L
    kernel_size_preprocessing: int = 5
    kernel_size_joint: int = 7
    conv_specification: str = "pp"
    depth_layers_prob: tuple[int, ...] = (5, 5, 5, 2)
    depth_layers_guidance: tuple[int, ...] = (3, 15, 15, 10)
    depth_layers_joint: tuple[int, ...] = (2, 2, 2)
    model_seed: int = 0
    pac_impl: str = "patches"  # windowed-product implementation of the PPAC layers


PRESETS = {
    "default": FlowConfig(),
    "smoke": FlowConfig(height=32, width=48, num_train_scenes=16, num_val_scenes=4, steps=6,
                        batch_size=8, crop=(32, 32), milestones=(4,), eval_every=3,
                        checkpoint_every=2, log_every=1, num_pictures=2),
    # starting points for HD3-layout data on disk (not tuned here: no HD3 training data is
    # shipped); reduce steps for CPU runs
    "sintel": FlowConfig(dataset="lists", steps=100_000, batch_size=8, crop=(256, 448),
                         lr=1e-4, branch_lr=1e-4, milestones=(50_000, 75_000), eval_every=5000,
                         checkpoint_every=1000, log_every=100, eval_batch_size=1),
    "kitti": FlowConfig(dataset="lists", steps=50_000, batch_size=4, crop=(320, 896),
                        lr=1e-4, branch_lr=1e-4, milestones=(25_000, 37_500), eval_every=2500,
                        checkpoint_every=1000, log_every=100, eval_batch_size=1),
}


def get_config(name: str = "default") -> FlowConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
