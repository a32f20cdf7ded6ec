"""Unit tests of the training pieces: config overrides, optimiser, losses, crops, checkpoints."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ppac_jax.train import cli
from ppac_jax.data.transforms import log_confidence, normalize_imagenet, random_crop_batch
from ppac_jax.losses import endpoint_error, epe_loss
from ppac_jax.train import Checkpointer, OptimConfig, check_batch_size, make_mesh, make_optimizer


FLOW_CONFIGS = "experiments.train_flow.configs"


def _parse(*argv):
    return cli.parse_flags(list(argv), prog="test", description="", configs=FLOW_CONFIGS,
                           default_workdir="w")


def test_overrides_parse_by_type_by_field_name_or_path():
    cfg, opts = _parse("--smoke", "--set", "steps=7", "--config.lr=0.5", "--set", "crop=16,24",
                       "--config.train.flip=false", "--config.optim.milestones", "3,5,9",
                       "--set", "data.dataset=lists", "--evaluate_only")
    assert (cfg.train.steps, cfg.optim.lr, cfg.train.crop, cfg.train.flip) == (7, 0.5, (16, 24),
                                                                             False)
    assert cfg.optim.milestones == (3, 5, 9) and cfg.data.dataset == "lists"
    assert cfg.data.height == 32 and opts.preset == "smoke" and opts.evaluate_only
    assert _parse()[0].data.height == 96 and _parse()[1].preset == "default"
    with pytest.raises(ValueError, match="unknown config field 'stepz'"):
        _parse("--set", "stepz=1")
    with pytest.raises(ValueError, match="config field train.steps"):
        _parse("--set", "steps=many")
    with pytest.raises(ValueError, match="unknown preset"):
        _parse("--preset", "huge")
    with pytest.raises(ValueError, match="unrecognized argument: --bogus"):
        _parse("--bogus")


def test_ambiguous_field_names_need_a_path():
    from ml_collections import ConfigDict

    config = ConfigDict(dict(a=dict(seed=1), b=dict(seed=2, lr=0.1)))
    assert cli.resolve_field(config, "lr") == "b.lr"
    assert cli.resolve_field(config, "a.seed") == "a.seed"
    with pytest.raises(ValueError, match="ambiguous: use one of a.seed, b.seed"):
        cli.resolve_field(config, "seed")


@pytest.mark.parametrize("name", ["smoke", "default"])
def test_presets_fit_1_2_4_8_devices(name):
    cfg = cli.load_config(FLOW_CONFIGS, name)
    assert all(cfg.train.batch_size % n == 0 for n in (1, 2, 4, 8))
    assert cfg.data.height % 16 == 0 and cfg.data.width % 16 == 0


def test_batch_size_error_says_how_to_fix():
    mesh = make_mesh()
    check_batch_size(mesh.devices.size * 3, mesh)
    four = types.SimpleNamespace(devices=np.empty(4))  # a mesh of 4 devices, as far as sizes go
    check_batch_size(8, four)
    with pytest.raises(ValueError, match=r"batch_size=6 .* 4 devices.*multiple of 4"):
        check_batch_size(6, four)


class _Net(nnx.Module):
    def __init__(self):
        self.network_guidance = nnx.Param(jnp.ones((3,)))
        self.layers_joint = nnx.Param(jnp.ones((2,)))


def test_optimizer_schedule_and_group_learning_rate():
    _, params = nnx.split(_Net(), nnx.Param)
    tx = make_optimizer(OptimConfig(lr=1.0, group_lr=(("network_guidance", 0.1),),
                                    milestones=(2,), gamma=0.5), params)
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    steps = []
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        steps.append((float(updates["layers_joint"][0]), float(updates["network_guidance"][0])))
    # Adam's first steps have magnitude lr; after milestone 2 the rate halves
    np.testing.assert_allclose(steps, [(-1, -0.1), (-1, -0.1), (-0.5, -0.05)], rtol=1e-3)
    nan_grads = jax.tree_util.tree_map(lambda g: g * jnp.nan, grads)
    updates, _ = tx.update(nan_grads, state, params)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree_util.tree_leaves(updates))


def test_weight_decay_adds_l2_gradient():
    params = {"w": jnp.asarray([2.0])}
    tx = make_optimizer(OptimConfig(lr=1.0, weight_decay=0.5, skip_nonfinite=False), params)
    tx_ref = optax.adam(1.0)
    u, _ = tx.update({"w": jnp.asarray([0.0])}, tx.init(params), params)
    u_ref, _ = tx_ref.update({"w": jnp.asarray([1.0])}, tx_ref.init(params), params)
    np.testing.assert_allclose(u["w"], u_ref["w"])


def test_epe_loss_values_mask_and_finite_gradient():
    pred = jnp.zeros((1, 2, 2, 2), jnp.float32).at[0, 0, 0].set(jnp.asarray([3.0, 4.0], jnp.float32))
    gt = jnp.zeros_like(pred)
    assert float(epe_loss(pred, gt)) == pytest.approx(5.0 / 4)
    valid = jnp.asarray([[[True, False], [False, False]]])
    assert float(epe_loss(pred, gt, valid)) == pytest.approx(5.0)
    g = jax.grad(lambda p: epe_loss(p, gt))(pred)
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(endpoint_error(pred, gt)[0, 0, 0], 5.0)
    with pytest.raises(ValueError, match="valid"):
        epe_loss(pred, gt, valid[..., :1])


def test_random_crops_are_deterministic_and_flip_negates_u():
    rng = np.random.default_rng(0)
    data = {"image1": rng.uniform(size=(3, 8, 10, 3)).astype(np.float32),
            "flow": rng.normal(size=(3, 8, 10, 2)).astype(np.float32)}
    a = random_crop_batch(data, np.random.default_rng([1, 5]), batch_size=6, crop=(4, 5))
    b = random_crop_batch(data, np.random.default_rng([1, 5]), batch_size=6, crop=(4, 5))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["image1"].shape == (6, 4, 5, 3)
    flipped = random_crop_batch(data, np.random.default_rng(0), batch_size=64, crop=(8, 10))
    for img, flow in zip(flipped["image1"], flipped["flow"]):
        i = [j for j in range(3) if np.allclose(data["image1"][j], img) or
             np.allclose(data["image1"][j][:, ::-1], img)][0]
        if np.allclose(data["image1"][i], img):
            np.testing.assert_array_equal(flow, data["flow"][i])
        else:
            np.testing.assert_array_equal(flow, data["flow"][i][:, ::-1] * [-1, 1])
    with pytest.raises(ValueError, match="crop"):
        random_crop_batch(data, rng, batch_size=1, crop=(9, 10))


def test_input_transforms():
    img = np.full((2, 2, 3), 255, np.uint8)
    np.testing.assert_allclose(normalize_imagenet(img)[0, 0], (1 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-6)
    assert log_confidence(np.zeros(1))[0] == pytest.approx(np.log(1e-20))


def test_checkpointer_keeps_latest_and_best(tmp_path):
    state = {"a": jnp.arange(3.0), "b": {"c": jnp.ones((2, 2))}}
    ck = Checkpointer(str(tmp_path), metric="aee")
    ck.save(1, state, metrics={"aee": 2.0})
    ck.save(2, jax.tree_util.tree_map(lambda x: x * 2, state), metrics={"aee": 1.0})
    ck.save(3, jax.tree_util.tree_map(lambda x: x * 3, state), metrics={"aee": 5.0})
    ck.wait()
    assert ck.latest_step() == 3
    latest = ck.restore(state)
    best = ck.restore(state, best=True)
    np.testing.assert_allclose(latest["a"], 3 * np.arange(3.0))
    np.testing.assert_allclose(best["b"]["c"], 2 * np.ones((2, 2)))
    ck.close()


def test_ppac_division_gradient_is_finite_near_the_floor():
    """float32 denominators just above PPAC's 1e-20 floor (collapsed confidences) used to give
    NaN gradients (d**-2 underflows on CPU); training relies on them being finite."""
    from ppac_jax.ops.prob import _divide

    num = jnp.asarray([3e-20, 1.0], jnp.float32)
    den = jnp.asarray([5e-20, 2.0], jnp.float32)
    g_num, g_den = jax.grad(lambda n, d: jnp.sum(_divide(n, d, None)), argnums=(0, 1))(num, den)
    assert bool(jnp.all(jnp.isfinite(g_num))) and bool(jnp.all(jnp.isfinite(g_den)))
    np.testing.assert_allclose(g_den[1], -0.25, rtol=1e-6)
    np.testing.assert_allclose(g_num[1], 0.5, rtol=1e-6)


def test_sigterm_saves_cleanly_and_rerun_resumes(tmp_path):
    import os
    import signal

    from ppac_jax.train import train_and_evaluate
    from tests.train_helper import make_task

    rng = np.random.default_rng(0)
    n, h, w = 6, 16, 24
    flow = rng.normal(size=(n, h, w, 2)).astype(np.float32)
    data = {"image1": rng.uniform(size=(n, h, w, 3)).astype(np.float32), "flow": flow,
            "valid": np.ones((n, h, w), bool),
            "estimate": flow + rng.normal(size=flow.shape).astype(np.float32),
            "confidence": rng.uniform(size=(n, h, w, 5)).astype(np.float32)}

    def terminate_at_step_1(step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    task, cfg = make_task(data, 4, hook=terminate_at_step_1)
    messages = []
    result = train_and_evaluate(task, cfg, str(tmp_path), log=messages.append)
    assert result["interrupted"] and result["step"] == 2
    assert "SIGTERM: saved step 2" in messages[-1]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    task, cfg = make_task(data, 4)
    messages = []
    result = train_and_evaluate(task, cfg, str(tmp_path), log=messages.append)
    assert messages[0] == "resuming from step 2"
    assert not result["interrupted"] and result["step"] == 4 and np.isfinite(result["aee"])


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
    import json
    import os

    from ppac_jax.train import MetricWriter

    w = MetricWriter(str(tmp_path))
    w.write(3, {"loss": jnp.float32(0.5), "grad_norm": float("nan")}, prefix="train/")
    w.close()
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["step"] == 3 and row["train/loss"] == 0.5 and row["train/grad_norm"] is None
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))
