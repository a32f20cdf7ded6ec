"""Metrics to JSONL and TensorBoard event files (tensorboardX: no TensorFlow needed)."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

__all__ = ["MetricWriter"]


class MetricWriter:
    """Append scalar metrics to ``<workdir>/metrics.jsonl`` and ``<workdir>/tensorboard``.

    Only process 0 writes; other processes get a no-op writer. TensorBoard output is skipped
    (with one warning) when tensorboardX is not installed.
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self._tb = None
        self._jsonl = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                print("tensorboardX not installed: writing metrics.jsonl only")
            else:
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict, *, prefix: str = "") -> None:
        """Write scalars ``{name: value}`` for ``step`` (names get ``prefix``; NaN/Inf are
        written as ``null`` to the JSONL file and left out of TensorBoard)."""
        if not self.active:
            return
        row = {"step": int(step), "time": time.time()}
        for k, v in metrics.items():
            v = float(np.asarray(v))
            row[f"{prefix}{k}"] = v if np.isfinite(v) else None  # strict JSON: NaN -> null
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and v is not None:
                    self._tb.add_scalar(k, v, int(step))
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
