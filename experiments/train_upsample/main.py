"""Joint upsampling with PAC: train, evaluate and report, on any number of devices.

    python -m experiments.train_upsample --workdir runs/upsample           # default: built-in
                                                    # scenes, PacJointUpsample, depth x8
    python -m experiments.train_upsample --workdir /tmp/smoke --smoke      # seconds
    python -m experiments.train_upsample --workdir runs/djif --set model=DJIF --set factor=16 \
        --set task=flow
    python -m experiments.train_upsample --workdir runs/jbu --set model=JBU_9_8_0.25 \
        --evaluate_only
    python -m experiments.train_upsample --preset nyu --workdir runs/nyu --set tfds_data_dir=DIR
    python -m experiments.train_upsample --preset sintel --workdir runs/sintel \
        --set sintel_root=.../MPI-Sintel-complete --set split_file=.../Sintel_train_val.txt
    python -m experiments.train_upsample --workdir runs/nyu --evaluate_only --pretrained x.pth

Re-running the same command resumes from the latest checkpoint in ``--workdir``. All devices
are used (batch sharded over a ``data`` mesh axis); the global batch must be divisible by the
device count. Flags and overrides: ``ppac_jax.train.cli``; presets: ``configs/``; task code:
``train.py``.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv=None) -> int:
    from experiments.train_upsample import train
    from ppac_jax.train import cli

    return cli.run(argv, prog="python -m experiments.train_upsample",
                   description=__doc__.split("\n")[0],
                   configs="experiments.train_upsample.configs",
                   default_workdir="runs/train_upsample",
                   train_and_evaluate=train.train_and_evaluate)


if __name__ == "__main__":
    sys.exit(main())
