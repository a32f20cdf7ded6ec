"""`python -m experiments.train_upsample`: smoke run end to end, model/factor/task overrides,
evaluation-only baselines, kill-and-resume and 4 simulated devices (subprocesses)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.train_upsample import main as train_upsample
from tests import golden
from tests.subprocess_runs import kill_after_checkpoint
from tests.train.test_train_distributed import _assert_same, _env

ROOT = str(golden.REPO)
STEPS = 4


def _run(args, devices=None):
    return subprocess.run([sys.executable, "-m", "experiments.train_upsample", *args],
                          env=_env(devices), capture_output=True, text=True, timeout=600,
                          cwd=ROOT)


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    work = tmp_path / "w"
    r = _run(["--workdir", str(work), "--smoke", "--no_progress"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "held-out RMSE" in r.stdout and "vs bilinear" in r.stdout
    summary = json.loads((work / "summary.json").read_text())
    assert summary["step"] == 6 and summary["rmse"] > 0 and summary["rmse_bilinear"] > 0
    assert summary["parameters"] == 55_509
    assert os.path.isdir(work / "checkpoints" / "6") and os.listdir(work / "best")
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in row and "train/rmse" in row for row in rows)
    assert any("eval/rmse_bilinear" in row for row in rows)
    assert any(f.startswith("events") for f in os.listdir(work / "tensorboard"))
    assert sorted(os.listdir(work / "pictures")) == ["step_000003", "step_000006"]
    assert len(os.listdir(work / "pictures" / "step_000006")) == 2
    # the export holds the trained weights under the original names; they load into the model
    from ppac_jax import convert
    from ppac_jax.nn import PacJointUpsampleLite

    exported = convert.read_state_dict(str(work / "export" / "PacJointUpsampleLite.pth"))
    assert "up_convts.0.weight" in exported and "branch_g.conv3.bias" in exported
    model = convert.load_torch_weights(PacJointUpsampleLite(4), exported)
    initial = convert.export_torch_weights(PacJointUpsampleLite(4))
    assert any(not np.allclose(initial[k], np.asarray(exported[k])) for k in initial)
    assert set(convert.export_torch_weights(model)) == set(initial)
    # re-running the finished command evaluates the checkpoint instead of training again
    again = _run(["--workdir", str(work), "--smoke", "--no_progress", "--evaluate_only"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((work / "summary.json").read_text())["rmse"] == pytest.approx(
        summary["rmse"], rel=1e-5)


@pytest.mark.slow
def test_overrides_model_factor_task_and_untrained_baselines(tmp_path, capsys):
    code = train_upsample.main(["--workdir", str(tmp_path / "djif"), "--smoke", "--no_progress",
                                "--set", "model=DJIF", "--set", "factor=16", "--set", "task=flow",
                                "--set", "steps=1", "--set", "eval_every=1", "--set",
                                "num_pictures=1"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = json.loads((tmp_path / "djif" / "summary.json").read_text())
    assert (summary["model"], summary["factor"], summary["task"]) == ("DJIF", 16, "flow")
    assert summary["parameters"] == 56_323 and summary["epe_bilinear"] > 0
    assert "held-out EPE" in out
    code = train_upsample.main(["--workdir", str(tmp_path / "bil"), "--smoke", "--no_progress",
                                "--set", "model=Bilinear"])
    assert code == 0
    summary = json.loads((tmp_path / "bil" / "summary.json").read_text())
    assert summary["parameters"] == 0
    assert summary["rmse"] == pytest.approx(summary["rmse_bilinear"], rel=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["--set", "model=Nope"], "model must be one of"),
    (["--set", "task=segmentation"], "config field task"),
    (["--set", "crop=18"], "multiple of factor"),
    (["--set", "dataset=sintel", "--set", "task=flow"], "needs --set sintel_root"),
    (["--set", "loss=l1"], "config field loss"),
    (["--pretrained", "/nonexistent/x.pth"], "no such file"),
])
def test_bad_arguments_give_one_clear_line(argv, message, tmp_path, capsys):
    code = train_upsample.main(["--workdir", str(tmp_path), "--smoke", "--no_progress", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def _helper(workdir, out=None, extra=()):
    return ([sys.executable, "-m", "tests.train_upsample_helper", "--workdir", str(workdir),
             "--steps", str(STEPS)] + (["--out", str(out)] if out else []) + list(extra))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("ref")
    out = work / "params.npz"
    r = subprocess.run(_helper(work / "w", out), env=_env(1), capture_output=True, text=True,
                       timeout=400, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return work / "w", out


@pytest.mark.slow
def test_four_devices_match_one_device(reference, tmp_path):
    out = tmp_path / "params.npz"
    r = subprocess.run(_helper(tmp_path / "w", out), env=_env(4), capture_output=True,
                       text=True, timeout=400, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same(*reference, tmp_path / "w", out)


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_to_same_parameters(reference, tmp_path):
    work = tmp_path / "w"
    proc = subprocess.Popen(_helper(work, extra=["--step_sleep", "0.5"]), env=_env(1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    ckdir = work / "checkpoints"
    steps = kill_after_checkpoint(proc, ckdir, min_step=2, poll=0.1)
    assert max(steps) < STEPS
    out = tmp_path / "params.npz"
    r = subprocess.run(_helper(work, out), env=_env(1), capture_output=True, text=True,
                       timeout=400, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from step" in r.stdout
    _assert_same(*reference, work, out)


def test_benchmark_table(tmp_path, capsys):
    from benchmarks import upsample as bench

    out = tmp_path / "table.md"
    assert bench.main(["--tasks", "depth", "--factors", "4", "--models", "Bilinear",
                       "JointBilateral", "--steps", "1", "--height", "16", "--width", "16",
                       "--crop", "8", "--train_scenes", "2", "--val_scenes", "1",
                       "--out", str(out)]) == 0
    text = out.read_text()
    assert "| depth | x4 | Bilinear | RMSE (m)" in text and "+0.0%" in text
    assert "| depth | x4 | JBU_9_8_0.25 |" in text and "| 81 |" in text
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]
    assert [r["model"] for r in rows] == ["Bilinear", "JointBilateral"]
    assert rows[0]["steps"] == 0 and rows[1]["steps"] == 1
