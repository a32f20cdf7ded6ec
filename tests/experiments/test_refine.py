"""Tests for `python -m experiments.refine`.

CLI plumbing runs with a tiny stand-in network (fast); the shipped checkpoints refine the
shipped Sintel, KITTI and VOC samples end to end (cropped to keep CPU time small).
"""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import refine
from ppac_jax.data import io
from tests.golden import shared_dir


def shared_or_skip(*parts):
    root = shared_dir()
    if root is None or not (root / "sample_data").is_dir():
        pytest.skip("shared/ (sample data, checkpoints) not found: put it beside the repository "
                    "or set PPAC_SHARED")
    return root.joinpath(*parts)


class _Branch(nnx.Module):
    def __init__(self, **shapes):
        for name, (shape, layout) in shapes.items():
            setattr(self, name, nnx.Param(jnp.zeros(shape), torch_layout=layout))


class FakePPacNet(nnx.Module):
    """Stands in for PPacNet: the same original-named weights refine reads, estimate + bias."""

    def __init__(self, channels, levels):
        self.layers_joint = nnx.List([_Branch(bias=((channels,), "same"))])
        self.network_prob = nnx.List([_Branch(weight=((5, 5, levels, 5), "OIHW"))])

    def __call__(self, estimates, log_probabilities, images):
        assert log_probabilities.shape[:3] == estimates.shape[:3] == images.shape[:3]
        assert images.shape[-1] == 3
        return estimates + self.layers_joint[0].bias[...] + 0.5


@pytest.fixture
def fake_flow_net(monkeypatch):
    monkeypatch.setattr(refine, "load_model", lambda path: FakePPacNet(2, 5))


def _flow_files(tmp_path, h=6, w=8):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    from PIL import Image
    Image.fromarray(image).save(tmp_path / "im.png")
    gt = rng.normal(size=(h, w, 2)).astype(np.float32)
    io.write_flo(tmp_path / "gt.flo", gt)
    np.save(tmp_path / "est.npy", gt + 1.0)
    (tmp_path / "ckpt.pth").write_bytes(b"unused by the fake loader")
    return gt


def test_single_sample_with_uniform_fallback(tmp_path, fake_flow_net, capsys):
    gt = _flow_files(tmp_path)
    out = tmp_path / "out"
    summary = refine.main(["--checkpoint", str(tmp_path / "ckpt.pth"), "--image", str(tmp_path / "im.png"),
                           "--estimate", str(tmp_path / "est.npy"), "--gt", str(tmp_path / "gt.flo"),
                           "--out", str(out)])
    text = capsys.readouterr().out + capsys.readouterr().err
    refined = io.read_flo(out / "im.flo")
    np.testing.assert_allclose(refined, gt + 1.5, rtol=1e-6)  # estimate + the fake's 0.5
    np.testing.assert_allclose(np.load(out / "im.npy"), refined)
    assert (out / "im_panel.png").is_file()
    assert summary["aee_before"] == pytest.approx(np.sqrt(2.0), rel=1e-6)
    assert summary["aee_after"] == pytest.approx(np.sqrt(2 * 1.5 ** 2), rel=1e-6)
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["confidence"] == "uniform"
    assert json.loads((out / "summary.json").read_text())["aee_after"] == summary["aee_after"]
    assert "AEE" in text


def test_fallback_is_announced(tmp_path, fake_flow_net, capsys):
    _flow_files(tmp_path)
    refine.main(["--checkpoint", str(tmp_path / "ckpt.pth"), "--image", str(tmp_path / "im.png"),
                 "--estimate", str(tmp_path / "est.npy"), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert "uniform confidence" in captured.out + captured.err


def test_confidence_file_is_used_and_checked(tmp_path, fake_flow_net, capsys):
    _flow_files(tmp_path)
    np.save(tmp_path / "est_prob.npy", np.full((6, 8, 5), 0.7, np.float32))
    refine.main(["--checkpoint", str(tmp_path / "ckpt.pth"), "--image", str(tmp_path / "im.png"),
                 "--estimate", str(tmp_path / "est.npy"), "--out", str(tmp_path / "o"),
                 "--flow-format", "kitti"])
    assert json.loads((tmp_path / "o" / "metrics.jsonl").read_text())["confidence"] == "file"
    assert "uniform confidence" not in capsys.readouterr().out
    flow, valid = io.read_kitti_flow(tmp_path / "o" / "im.png")
    assert valid.all() and flow.shape == (6, 8, 2)
    np.save(tmp_path / "est_prob.npy", np.full((6, 8, 3), 0.7, np.float32))
    with pytest.raises(SystemExit, match="est_prob.npy.*shape"):
        refine.main(["--checkpoint", str(tmp_path / "ckpt.pth"), "--image", str(tmp_path / "im.png"),
                     "--estimate", str(tmp_path / "est.npy"), "--out", str(tmp_path / "o")])


def test_bad_arguments_give_one_line(tmp_path, fake_flow_net, capsys):
    _flow_files(tmp_path)
    ckpt = str(tmp_path / "ckpt.pth")
    with pytest.raises(SystemExit) as exit_info:
        refine.main(["--checkpoint", ckpt])  # neither --list nor --image
    assert exit_info.value.code == 2 and "--list" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        refine.main(["--checkpoint", str(tmp_path / "nope.pth"), "--image", "a", "--estimate", "b"])
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        refine.main(["--checkpoint", ckpt, "--image", str(tmp_path / "im.png"),
                     "--estimate", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "o")])
    assert "--estimate file not found" in capsys.readouterr().err
    (tmp_path / "l.txt").write_text("im.png im.png\n")  # estimate expected in <root>/inputs_flow
    with pytest.raises(SystemExit, match="estimate not found: .*inputs_flow.*im.npy"):
        refine.main(["--checkpoint", ckpt, "--list", str(tmp_path / "l.txt"), "--out", str(tmp_path / "o")])
    (tmp_path / "bad.npy").write_bytes(b"junk")
    with pytest.raises(SystemExit, match="bad.npy"):
        refine.main(["--checkpoint", ckpt, "--image", str(tmp_path / "im.png"),
                     "--estimate", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "o")])
    np.save(tmp_path / "small.npy", np.zeros((3, 3, 2), np.float32))
    with pytest.raises(SystemExit, match="small.npy.*image"):
        refine.main(["--checkpoint", ckpt, "--image", str(tmp_path / "im.png"),
                     "--estimate", str(tmp_path / "small.npy"), "--out", str(tmp_path / "o")])


def test_list_layout_and_default_root(tmp_path, fake_flow_net):
    data = tmp_path / "data"
    for sub in ("lists", "images", "flow", "inputs_flow/images"):
        (data / sub).mkdir(parents=True)
    for name in ("a", "b"):
        _flow_files(tmp_path)
        os.replace(tmp_path / "im.png", data / "images" / f"{name}.png")
        os.replace(tmp_path / "gt.flo", data / "flow" / f"{name}.flo")
        os.replace(tmp_path / "est.npy", data / "inputs_flow" / "images" / f"{name}.npy")
    (data / "lists" / "l.txt").write_text("images/a.png images/b.png flow/a.flo\n"
                                          "images/b.png images/a.png flow/b.flo\n")
    summary = refine.main(["--checkpoint", str(tmp_path / "ckpt.pth"), "--list",
                           str(data / "lists" / "l.txt"), "--out", str(tmp_path / "o")])
    assert summary["samples"] == 2 and summary["scored_samples"] == 2
    assert (tmp_path / "o" / "images" / "b.flo").is_file()
    assert (tmp_path / "o" / "images" / "a_panel.png").is_file()


# ----------------------------------------------------------------------------- real checkpoints


def _real_or_skip():
    try:
        from ppac_jax.convert import load_ppacnet  # noqa: F401
    except ImportError:
        pytest.skip("ppac_jax.convert.load_ppacnet not available in this checkout")


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint, list_name, crop", [
    ("flow_refinement_sintel_clean.pth", "MPISintel_sample.txt", (96, 160)),
    ("flow_refinement_kitti.pth", "KITTI_sample.txt", (96, 160)),  # same shape: one compile
])
def test_shipped_flow_samples_end_to_end(tmp_path, checkpoint, list_name, crop, capsys):
    _real_or_skip()
    ckpt = shared_or_skip("checkpoints", checkpoint)
    lst = shared_or_skip("sample_data", "lists", list_name)
    summary = refine.main(["--checkpoint", str(ckpt), "--list", str(lst), "--out", str(tmp_path),
                           "--crop", str(crop[0]), str(crop[1])])
    output = capsys.readouterr().out
    assert "AEE" in output and "uniform confidence" in output
    for key in ("aee_before", "aee_after", "outlier_before", "outlier_after"):
        assert np.isfinite(summary[key])
    stem = os.path.splitext(open(lst).read().split()[0])[0]
    flow_file = tmp_path / (stem + (".png" if "KITTI" in list_name else ".flo"))
    flow, _ = io.read_flow(flow_file)
    assert flow.shape == (*crop, 2) and np.isfinite(flow).all()
    assert (tmp_path / (stem + "_panel.png")).is_file()
    # The refinement changes the estimate, but only moderately.
    estimate = io.read_hd3_estimate(lst.parents[1] / "inputs_flow" / (stem + ".npy"))
    change = np.abs(flow - refine.center_crop(estimate, crop)).mean()
    assert 1e-4 < change < 2.0


def _synthetic_voc_logits(sample):
    """`[H, W, 21]` logits built from the label by the golden files' recipe (shifted label + waves)."""
    labels = io.read_label_png(sample / "segmentation" / "2007_003788.png").astype(np.int64)
    h, w = labels.shape
    y, x = np.mgrid[:h, :w].astype(np.float64)
    shifted = np.where(labels[:, np.clip(np.arange(w) - 6, 0, w - 1)] == 255, 0,
                       labels[:, np.clip(np.arange(w) - 6, 0, w - 1)])
    c = np.arange(21)[:, None, None]
    logits = (np.sin(2 * np.pi * (c + 1) * (x + 0.5) / w + 0.7 * c)
              * np.cos(2 * np.pi * (0.5 * c + 1) * (y + 0.5) / h) + 4.0 * (shifted == c))
    return np.moveaxis(logits, 0, -1).astype(np.float32)


def test_network_inputs_match_the_reference():
    """Image normalisation, estimates and segmentation log-probabilities equal the golden inputs."""
    sample = shared_or_skip("sample_data")
    golden = np.load(shared_or_skip("golden", "ppacnet_flow_refinement_sintel_clean_crop48x96_f32.npz"))
    meta = json.loads(str(golden["meta"]))
    (y, x), (h, w) = meta["crop_yx"], meta["crop_hw"]
    image = refine.normalize_image(io.read_image(sample / meta["image_file"]))[y:y + h, x:x + w]
    np.testing.assert_array_equal(image, golden["in_images"][0].transpose(1, 2, 0))
    flow = io.read_hd3_estimate(sample / meta["flow_file"], channels=2)[y:y + h, x:x + w]
    np.testing.assert_array_equal(flow, golden["in_estimates"][0].transpose(1, 2, 0))

    golden = np.load(shared_or_skip("golden", "ppacnet_segmentation_refinement_pascal_crop32x40_f32.npz"))
    meta = json.loads(str(golden["meta"]))
    (y, x), (h, w) = meta["crop_yx"], meta["crop_hw"]
    logits = _synthetic_voc_logits(sample)[y:y + h, x:x + w]
    np.testing.assert_allclose(logits, golden["in_estimates"][0].transpose(1, 2, 0), atol=1e-6)
    np.testing.assert_allclose(refine.log_softmax_probabilities(logits),
                               golden["in_log_probabilities"][0].transpose(1, 2, 0), atol=2e-6)


def test_unreadable_checkpoint_gives_one_line(tmp_path):
    _real_or_skip()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    _flow_files(tmp_path)
    with pytest.raises(SystemExit, match="cannot load checkpoint .*junk.pth"):
        refine.main(["--checkpoint", str(tmp_path / "junk.pth"), "--image", str(tmp_path / "im.png"),
                     "--estimate", str(tmp_path / "est.npy")])


@pytest.mark.slow
def test_shipped_segmentation_sample_end_to_end(tmp_path, capsys):
    _real_or_skip()
    ckpt = shared_or_skip("checkpoints", "segmentation_refinement_pascal.pth")
    sample = shared_or_skip("sample_data")
    estimates = tmp_path / "est" / "images"
    estimates.mkdir(parents=True)
    np.save(estimates / "2007_003788.npy", _synthetic_voc_logits(sample))
    summary = refine.main(["--checkpoint", str(ckpt), "--list",
                           str(sample / "lists" / "Pascal_sample.txt"), "--estimates",
                           str(tmp_path / "est"), "--out", str(tmp_path / "out"),
                           "--crop", "96", "128"])
    assert "mIoU" in capsys.readouterr().out
    assert 0 < summary["miou_before"] <= 1 and 0 < summary["miou_after"] <= 1
    refined = io.read_label_png(tmp_path / "out" / "images" / "2007_003788.png")
    assert refined.shape == (96, 128) and refined.max() < 21


def test_refine_reproduces_the_reference_output(tmp_path):
    """Files in, files out: the golden PPacNet output of the Sintel crop with its confidences."""
    _real_or_skip()
    from PIL import Image
    sample = shared_or_skip("sample_data")
    golden = np.load(shared_or_skip("golden", "ppacnet_flow_refinement_sintel_clean_crop48x96_f32.npz"))
    meta = json.loads(str(golden["meta"]))
    (y0, x0), (h, w) = meta["crop_yx"], meta["crop_hw"]
    crop = (slice(y0, y0 + h), slice(x0, x0 + w))
    full = io.read_image(sample / meta["image_file"])
    height, width = full.shape[:2]
    Image.fromarray(full[crop]).save(tmp_path / "im.png")
    np.save(tmp_path / "im.npy", io.read_hd3_estimate(sample / meta["flow_file"])[crop])
    # The file's synthetic confidences (formula in meta["probabilities"]), on full-image coordinates.
    y, x = np.mgrid[:height, :width].astype(np.float64)
    level = np.arange(5)[:, None, None]
    prob = 0.55 + 0.4 * np.sin(np.pi * (level + 1) * x / width + 0.3 * level) * np.cos(
        np.pi * (level + 2) * y / height)
    np.save(tmp_path / "im_prob.npy", np.moveaxis(prob, 0, -1)[crop].astype(np.float32))
    refine.main(["--checkpoint", str(shared_or_skip("checkpoints", meta["checkpoint"])),
                 "--image", str(tmp_path / "im.png"), "--estimate", str(tmp_path / "im.npy"),
                 "--out", str(tmp_path / "out"), "--no-panel"])
    expected = golden["out_output"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "im.npy"), expected,
                               rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(io.read_flo(tmp_path / "out" / "im.flo"), expected,
                               rtol=1e-5, atol=1e-5 * np.abs(expected).max())
