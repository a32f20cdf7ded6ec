"""PPAC flow refinement: train, evaluate and report, on any number of devices.

    python -m experiments.train_flow --workdir runs/flow            # default: synthetic, ~10 min CPU
    python -m experiments.train_flow --workdir /tmp/smoke --smoke   # seconds
    python -m experiments.train_flow --workdir runs/flow --set steps=2000 --config.optim.lr=1e-3
    python -m experiments.train_flow --workdir runs/flow --evaluate_only --save_refined
    python -m experiments.train_flow --preset sintel --workdir runs/sintel \
        --set train_list=... --set val_list=... --set estimates_root=...

Re-running the same command resumes from the latest checkpoint in ``--workdir``. All devices
are used (batch sharded over a ``data`` mesh axis, parameters replicated); the global batch must
be divisible by the device count. For several hosts, start one process per host with
``--distributed`` (plus ``--coordinator``/``--num_processes``/``--process_id`` where the cluster
does not provide them), e.g. on two machines sharing ``runs/``:

    python -m experiments.train_flow --workdir runs/flow --distributed \
        --coordinator host0:1234 --num_processes 2 --process_id 0     # on host0
    python -m experiments.train_flow --workdir runs/flow --distributed \
        --coordinator host0:1234 --num_processes 2 --process_id 1     # on host1

Flags and overrides: ``ppac_jax.train.cli``; presets: ``configs/``; task code: ``train.py``.
"""

from __future__ import annotations

import sys

from absl import flags

__all__ = ["main"]


def _flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_boolean("save_refined", False,
                         "write refined validation flows to WORKDIR/refined (.npy and .flo)",
                         flag_values=fv)


def main(argv=None) -> int:
    from experiments.train_flow import train
    from ppac_jax.train import cli

    return cli.run(argv, prog="python -m experiments.train_flow",
                   description=__doc__.split("\n")[0], configs="experiments.train_flow.configs",
                   default_workdir="runs/train_flow", extra_flags=_flags,
                   train_and_evaluate=train.train_and_evaluate)


if __name__ == "__main__":
    sys.exit(main())
