"""Data-parallel equivalence and resume determinism of ppac_jax.train, in subprocesses.

A tiny refinement net (tests/train_helper.py) trains on small synthetic scenes:
* 4 simulated CPU devices give the same losses and parameters as 1 device;
* a run killed with SIGKILL and re-run resumes and ends with the uninterrupted parameters;
* 2 processes joined with jax.distributed give the same as 1 process.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from ppac_jax.data.datasets import synthetic_flow_dataset
from tests import golden
from tests.subprocess_runs import kill_after_checkpoint, logged_losses
from tests.subprocess_runs import subprocess_env as _env

ROOT = str(golden.REPO)
STEPS = 4
TOL = 1e-5


def _helper(data, workdir, out=None, steps=STEPS, extra=()):
    cmd = [sys.executable, "-m", "tests.train_helper", "--data", str(data), "--workdir",
           str(workdir), "--steps", str(steps)] + (["--out", str(out)] if out else []) + list(extra)
    return cmd


def _params(path):
    with np.load(path) as f:
        return [f[k] for k in sorted(f.files, key=lambda s: int(s.split("_")[1]))]


def _assert_same(a_dir, a_out, b_dir, b_out):
    la, lb = logged_losses(a_dir), logged_losses(b_dir)
    assert la.shape == (STEPS,) and lb.shape == (STEPS,)
    np.testing.assert_allclose(lb, la, rtol=TOL, atol=TOL)
    pa, pb = _params(a_out), _params(b_out)
    assert len(pa) == len(pb) > 0
    for x, y in zip(pa, pb):
        np.testing.assert_allclose(y, x, rtol=TOL, atol=TOL)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = synthetic_flow_dataset(range(10), height=32, width=48)
    path = tmp_path_factory.mktemp("data") / "scenes.npz"
    np.savez(path, **d)
    return path


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    work = tmp_path_factory.mktemp("ref")
    out = work / "params.npz"
    r = subprocess.run(_helper(data, work / "w", out), env=_env(1), capture_output=True,
                       text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    return work / "w", out


def test_losses_decrease_and_files_written(reference):
    workdir, out = reference
    losses = logged_losses(workdir)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(STEPS)))
    assert os.listdir(os.path.join(workdir, "best"))
    assert os.listdir(os.path.join(workdir, "pictures"))


def test_four_devices_match_one_device(data, reference, tmp_path):
    out = tmp_path / "params.npz"
    r = subprocess.run(_helper(data, tmp_path / "w", out), env=_env(4), capture_output=True,
                       text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same(*reference, tmp_path / "w", out)


def test_sigkill_then_rerun_resumes_to_same_parameters(data, reference, tmp_path):
    work = tmp_path / "w"
    proc = subprocess.Popen(_helper(data, work, extra=["--step_sleep", "0.5"]), env=_env(1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckdir = work / "checkpoints"
    steps = kill_after_checkpoint(proc, ckdir, min_step=2, poll=0.1)
    killed_at = max(steps)
    assert killed_at < STEPS
    out = tmp_path / "params.npz"
    r = subprocess.run(_helper(data, work, out), env=_env(1), capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from step" in r.stdout
    resumed = int(r.stdout.split("resuming from step")[1].split()[0])
    assert 2 <= resumed < STEPS
    _assert_same(*reference, work, out)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(data, reference, tmp_path):
    port = _free_port()
    out = tmp_path / "params.npz"
    procs = []
    for pid in range(2):
        extra = ["--coordinator", f"localhost:{port}", "--num_processes", "2",
                 "--process_id", str(pid)]
        procs.append(subprocess.Popen(_helper(data, tmp_path / "w", out if pid == 0 else None,
                                              extra=extra),
                                      env=_env(1), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    errs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("two-process run timed out")
        errs.append(err)
    assert all(p.returncode == 0 for p in procs), "\n".join(e[-3000:] for e in errs)
    _assert_same(*reference, tmp_path / "w", out)
