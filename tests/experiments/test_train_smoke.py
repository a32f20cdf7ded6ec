"""`python -m experiments.train_flow --smoke` end to end, resume, and one-line CLI errors."""

import json
import os
import subprocess
import sys

import pytest

from experiments.train_flow import main as train_flow
from tests import golden
from tests.subprocess_runs import subprocess_env

ROOT = str(golden.REPO)


def _run(args):
    return subprocess.run([sys.executable, "-m", "experiments.train_flow", *args],
                          env=subprocess_env(),
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_smoke_run_writes_checkpoints_metrics_pictures_and_summary(tmp_path):
    work = tmp_path / "w"
    r = _run(["--workdir", str(work), "--smoke", "--no_progress", "--save_refined"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "input AEE" in r.stdout and "refined AEE" in r.stdout
    assert "confidence vs error correlation" in r.stdout
    summary = json.loads((work / "summary.json").read_text())
    assert summary["step"] == 6 and summary["aee"] > 0 and summary["aee_input"] > 0
    assert os.path.isdir(work / "checkpoints" / "6") and os.listdir(work / "best")
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in row for row in rows) and any("eval/aee" in row for row in rows)
    assert any(f.startswith("events") for f in os.listdir(work / "tensorboard"))
    pictures = sorted(os.listdir(work / "pictures"))
    assert pictures == ["step_000003", "step_000006"]
    assert len(os.listdir(work / "pictures" / "step_000006")) == 2
    assert len([f for f in os.listdir(work / "refined") if f.endswith(".flo")]) == 4
    assert "exported the best weights" in r.stdout
    _check_exported_weights_load_for_refine(work)
    # (resuming is tested in test_train.py and test_train_distributed.py)


def _check_exported_weights_load_for_refine(work):
    """WORKDIR/export/ppacnet.pth holds trained weights; refine loads them from the workdir."""
    import numpy as np

    from experiments import refine
    from experiments.train_flow import train
    from ppac_jax import convert
    from ppac_jax.train import cli

    net = refine.load_model(str(work))
    exported = convert.export_torch_weights(net)
    again = convert.read_state_dict(str(work / "export" / "ppacnet.pth"))
    assert set(again) == set(exported) and "layers_joint.0.weight_normalization" in exported
    for name, value in exported.items():
        np.testing.assert_array_equal(np.asarray(again[name]), value)
    # Same architecture and seed as the run, before training: the export is not the init.
    config = cli.load_config("experiments.train_flow.configs", "smoke")
    initial = convert.export_torch_weights(train.make_model_factory(config)())
    assert set(initial) == set(exported)
    assert any(not np.allclose(initial[k], exported[k]) for k in exported)


@pytest.mark.parametrize("argv, message", [
    (["--preset", "huge"], "unknown preset"),
    (["--smoke", "--set", "stepz=3"], "unknown config field 'stepz'"),
    (["--smoke", "--set", "batch_size=three"], "config field train.batch_size"),
    (["--smoke", "--set", "crop=1,2,3"], "config field train.crop"),
    (["--smoke", "--bogus"], "unrecognized argument: --bogus"),
    (["--smoke", "--pretrained", "/nonexistent/x.pth"], "no such file"),
    (["--smoke", "--set", "dataset=lists"], "needs --set train_list"),
])
def test_bad_arguments_give_one_clear_line(argv, message, tmp_path, capsys):
    code = train_flow.main(["--workdir", str(tmp_path), "--no_progress", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_evaluate_only_with_original_checkpoint_on_sintel_sample(tmp_path):
    from tests.golden import shared_dir

    root = shared_dir()
    pth = root / "checkpoints" / "flow_refinement_sintel_clean.pth" if root else None
    if pth is None or not pth.exists():
        pytest.skip("shared/ checkpoints and sample data not found")
    s = root / "sample_data"
    lst = str(s / "lists" / "MPISintel_sample.txt")
    r = _run(["--preset", "sintel", "--workdir", str(tmp_path), "--evaluate_only", "--no_progress",
              "--pretrained", str(pth), "--set", f"train_list={lst}", "--set", f"val_list={lst}",
              "--set", f"estimates_root={s / 'inputs_flow'}", "--set", "missing_confidence=uniform"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "loaded original weights" in r.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    # the shipped HD3 estimate is good (AEE ~0.38); refining it without its confidence files
    # (uniform confidences) must keep it good
    assert summary["aee_input"] < 0.5 and summary["aee"] < 0.5
