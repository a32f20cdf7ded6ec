"""AAF in training: segmenter_loss, parameter labels, the size-weight record and picture, and
``experiments.train_segmentation --set method=segmenter --set loss=aaf`` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ppac_jax import losses
from ppac_jax.train.aaf import (TABLES_KEY, AAFTables, aaf_param_labels, draw_size_weights,
                                segmenter_loss, size_weight_record)
from tests import golden
from tests.subprocess_runs import subprocess_env

REPO = str(golden.REPO)
KW = dict(num_classes=3, step=5, num_steps=50)


def test_segmenter_loss_variants_and_errors():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 4, 3))
    labels = np.repeat(np.repeat(rng.integers(0, 3, (2, 4, 4)), 4, 1), 4, 2)
    tables = (rng.normal(size=(3, 3)), rng.normal(size=(3, 3)))

    @jax.jit
    def run(logits, labels, tables):
        out = {name: segmenter_loss(name, logits, labels, tables, **KW)
               for name in ("ce", "affinity", "aaf")}
        lam = dict(margin=3.0, lambda_edge=1.0, lambda_not_edge=1.0, **KW)
        return out, (losses.affinity_training_loss(logits, labels, **lam),
                     losses.aaf_training_loss(logits, labels, *tables, **lam))

    out, (aff_ref, aaf_ref) = run(logits, labels, tables)
    (ce, ce_aux), (aff, aff_aux), (aaf, aaf_aux) = out["ce"], out["affinity"], out["aaf"]
    assert set(ce_aux) == {"seg"}
    assert float(ce) == float(aff_aux["seg"]) == float(aaf_aux["seg"])
    np.testing.assert_allclose(aff, ce + aff_aux["affinity"], rtol=1e-14)
    np.testing.assert_allclose(aff, aff_ref, rtol=1e-14)
    np.testing.assert_allclose(aaf, aaf_ref, rtol=1e-14)
    assert float(aaf) != float(aff) != float(ce)
    assert {"edge_mean_s1", "not_edge_mean_s3"} <= set(aaf_aux)
    with pytest.raises(ValueError, match="tables"):
        segmenter_loss("aaf", logits, labels, **KW)
    with pytest.raises(ValueError, match="loss must be one of"):
        segmenter_loss("dice", logits, labels, **KW)


def test_tables_in_a_model_are_labelled_for_ascent_and_recorded(tmp_path):
    class Model(nnx.Module):
        def __init__(self):
            self.conv = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
            setattr(self, TABLES_KEY, AAFTables(3))

    _, params, _ = nnx.split(Model(), nnx.Param, ...)
    labels = aaf_param_labels(params, head_names=("conv",))
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(labels)}
    assert sorted(set(flat.values())) == ["aaf", "head"]
    assert all(v == "aaf" for k, v in flat.items() if TABLES_KEY in k)
    tables = (jnp.zeros((3, 3)).at[1, 2].set(2.0), jnp.zeros((3, 3)))
    record = size_weight_record(tables, ["a", "b", "c"])
    assert record["not_edge"]["a"] == [pytest.approx(1 / 3)] * 3
    assert record["edge"]["b"][2] == pytest.approx(np.exp(2) / (2 + np.exp(2)), rel=1e-5)
    path = draw_size_weights(str(tmp_path / "w.png"), record)
    assert os.path.getsize(path) > 1000


@pytest.mark.slow
def test_experiment_trains_the_segmenter_with_aaf(tmp_path):
    workdir = tmp_path / "run"
    env = subprocess_env()
    cmd = [sys.executable, "-m", "experiments.train_segmentation", "--smoke", "--no_progress",
           "--workdir", str(workdir), "--set", "method=segmenter", "--set", "loss=aaf",
           "--set", "tables_lr=5.0"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert 0 <= summary["boundary_miou"] <= 1 and summary["loss"] == "aaf"
    weights = json.loads((workdir / "size_weights.json").read_text())
    assert set(weights) == {"edge", "not_edge"} and len(weights["edge"]) == 6
    assert any(abs(w - 1 / 3) > 1e-3 for row in weights["edge"].values() for w in row)
    assert (workdir / "size_weights.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/w_edge_0_s1" in r]
    assert train and all(np.isfinite(r["train/loss"]) for r in train)
    assert "train/affinity" in train[-1] and any("eval/boundary_miou" in r for r in rows)
    # the ppac method has no tables: one clear line (the cached scenes make this quick)
    bad = subprocess.run(cmd[:-6] + ["--set", "loss=aaf"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "method=segmenter" in bad.stdout + bad.stderr
