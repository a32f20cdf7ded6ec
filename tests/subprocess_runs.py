"""Helpers shared by the tests that train in a subprocess: its environment, its logged losses,
and killing it (SIGKILL) once a checkpoint is committed."""

import json
import os
import signal
import time

import numpy as np
import pytest

from tests.golden import REPO

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
OPTIMIZATION_FLAG = "--xla_backend_optimization_level"


def xla_flags(devices=None, *, default_optimization=False):
    """XLA_FLAGS of a subprocess (an experiment or notebook run): the caller's flags,
    ``devices`` simulated CPU devices (default: XLA's one) and LLVM optimisation level 0, as in
    the test workers (tests/conftest.py: compiling dominates these short runs).
    ``default_optimization``: XLA's default level.
    """
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith((DEVICE_COUNT_FLAG, OPTIMIZATION_FLAG))]
    if not default_optimization:
        flags.append(f"{OPTIMIZATION_FLAG}=0")
    if devices:
        flags.append(f"{DEVICE_COUNT_FLAG}={devices}")
    return " ".join(flags)


def subprocess_env(devices=None, *, default_optimization=False):
    """The environment of an experiment run in a subprocess: this checkout on PYTHONPATH, CPU
    and :func:`xla_flags`."""
    return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
                XLA_FLAGS=xla_flags(devices, default_optimization=default_optimization))


def logged_losses(workdir):
    """``train/loss`` per step from ``workdir/metrics.jsonl`` (a resumed run re-logs some steps:
    the last value of a step is kept)."""
    rows = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "train/loss" in row:
                rows[row["step"]] = row["train/loss"]
    return np.array([rows[k] for k in sorted(rows)])


def kill_after_checkpoint(proc, ckdir, *, min_step=0, poll=0.1, timeout=300):
    """SIGKILL ``proc`` once Orbax has committed a checkpoint of step >= ``min_step`` under
    ``ckdir``; returns the committed steps seen. Fails the test if the run ends first or no
    checkpoint appears within ``timeout`` seconds."""
    deadline = time.time() + timeout
    steps = []
    try:
        while time.time() < deadline:
            steps = [int(s) for s in (os.listdir(ckdir) if ckdir.is_dir() else []) if s.isdigit()
                     and (ckdir / s / "commit_success.txt").exists()]
            if steps and max(steps) >= min_step:
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(poll)
        else:
            pytest.fail("no checkpoint appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return steps
