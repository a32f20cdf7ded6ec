"""Segmentation refinement: train, evaluate and report, on any number of devices.

    python -m experiments.train_segmentation --workdir runs/seg            # built-in scenes
    python -m experiments.train_segmentation --workdir /tmp/smoke --smoke  # seconds
    python -m experiments.train_segmentation --workdir runs/seg --set steps=600 --set lr=2e-3
    python -m experiments.train_segmentation --workdir runs/seg --evaluate_only --save_refined
    python -m experiments.train_segmentation --workdir runs/paccrf --set method=paccrf
    python -m experiments.train_segmentation --workdir runs/hs --set method=hotswap \
        --set "crop=(96,128)"
    python -m experiments.train_segmentation --workdir runs/fcn --set method=paccrf \
        --set backbone=fcn8s --set width=0.0625
    python -m experiments.train_segmentation --preset pascal --workdir runs/voc \
        --set data_root=VOC2012 --set train_list=train.txt --set val_list=val.txt \
        --set logits_root=deeplab_logits
    python -m experiments.train_segmentation --preset pascal --workdir runs/voc_eval \
        --evaluate_only --pretrained segmentation_refinement_pascal.pth --set val_list=...

``--set method=NAME`` picks the refinement method and ``--set loss=NAME`` the training loss
(registries in ``registry.py``). The default run generates scenes with per-pixel class labels,
trains a small stride-4 baseline segmenter on scenes of its own, caches its upsampled logits on
the training and held-out scenes in ``WORKDIR/data``, trains the refinement and reports the
held-out mIoU of the baseline and of the refined logits. Re-running resumes; all devices are
used (batch sharded over a ``data`` mesh axis); ``--distributed`` runs one process per host.

Flags and overrides: ``ppac_jax.train.cli``; presets: ``configs/``; task code: ``train.py``.
"""

from __future__ import annotations

import sys

from absl import flags

__all__ = ["main"]


def _flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_boolean("save_refined", False,
                         "write refined validation labels to WORKDIR/refined as VOC palette PNGs",
                         flag_values=fv)


def main(argv=None) -> int:
    from experiments.train_segmentation import train
    from ppac_jax.train import cli

    return cli.run(argv, prog="python -m experiments.train_segmentation",
                   description=__doc__.split("\n")[0],
                   configs="experiments.train_segmentation.configs",
                   default_workdir="runs/train_segmentation", extra_flags=_flags,
                   train_and_evaluate=train.train_and_evaluate)


if __name__ == "__main__":
    sys.exit(main())
