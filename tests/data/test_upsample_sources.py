"""Joint-upsampling data sources on tiny local stand-ins: NYU Depth v2 through a mocked TFDS
``nyu_depth_v2`` and MPI Sintel in its folder layout with a split file written here."""

import json

import numpy as np
import pytest
from PIL import Image

from experiments.train_upsample import main as train_upsample
from ppac_jax.data import io
from ppac_jax.data.upsampling_sources import nyu_tfds_source, sintel_source, synthetic_source


def _sintel(root, frames=(3, 2), h=24, w=32):
    """Two sequences with 3 and 2 frames: 2 + 1 samples (every frame but a sequence's last)."""
    rng = np.random.default_rng(0)
    expected = []
    for s, n in enumerate(frames):
        for f in range(1, n + 1):
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            path = root / "training" / "clean" / f"seq{s}" / f"frame_{f:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
            if f < n:
                flow = rng.normal(size=(h, w, 2)).astype(np.float32)
                (root / "training" / "flow" / f"seq{s}").mkdir(parents=True, exist_ok=True)
                io.write_flo(root / "training" / "flow" / f"seq{s}" / f"frame_{f:04d}.flo", flow)
                expected.append((f"seq{s}/frame_{f:04d}", image, flow))
    (root / "split.txt").write_text("1\n2\n1\n")
    return expected


def test_sintel_folder_layout_and_split(tmp_path):
    expected = _sintel(tmp_path)
    train = sintel_source(str(tmp_path), str(tmp_path / "split.txt"), "train")
    val = sintel_source(str(tmp_path), str(tmp_path / "split.txt"), "val")
    assert train.names == [expected[0][0], expected[2][0]] and val.names == [expected[1][0]]
    for source, picks in ((train, (0, 2)), (val, (1,))):
        for i, k in enumerate(picks):
            np.testing.assert_array_equal(source[i]["image"], expected[k][1])
            np.testing.assert_array_equal(source[i]["target"], expected[k][2])
    (tmp_path / "bad.txt").write_text("1\n2\n")
    with pytest.raises(ValueError, match="has 2 entries but .* 3 Sintel samples"):
        sintel_source(str(tmp_path), str(tmp_path / "bad.txt"))
    with pytest.raises(FileNotFoundError, match="split file"):
        sintel_source(str(tmp_path), str(tmp_path / "none.txt"))
    with pytest.raises(FileNotFoundError, match="final"):
        sintel_source(str(tmp_path), str(tmp_path / "split.txt"), render_pass="final")


@pytest.mark.slow
def test_sintel_preset_runs_on_the_folder(tmp_path, capsys):
    _sintel(tmp_path / "sintel")
    code = train_upsample.main([
        "--preset", "sintel", "--workdir", str(tmp_path / "w"), "--no_progress",
        "--set", f"sintel_root={tmp_path / 'sintel'}", "--set",
        f"split_file={tmp_path / 'sintel' / 'split.txt'}", "--set", "model=Bilinear",
        "--set", "num_pictures=1"])
    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["task"] == "flow" and summary["epe"] > 0
    assert (tmp_path / "w" / "pictures" / "step_000000" / "sample_00.png").is_file()


@pytest.mark.slow
def test_nyu_preset_trains_on_mocked_tfds(tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        source = nyu_tfds_source("train")
        assert len(source) == 3
        record = source[2]
        assert record["image"].shape == (480, 640, 3) and record["image"].dtype == np.uint8
        assert record["target"].shape == (480, 640, 1) and record["target"].dtype == np.float32
        code = train_upsample.main([
            "--preset", "nyu", "--workdir", str(tmp_path / "w"), "--no_progress",
            "--set", "model=JBU_17_8_0.125", "--set", "steps=2", "--set", "crop=32",
            "--set", "batch_size=2", "--set", "eval_every=2", "--set", "checkpoint_every=1",
            "--set", "log_every=1", "--set", "max_val_images=1", "--set", "num_pictures=1"])
    out = capsys.readouterr()
    assert code == 0, out.err
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["step"] == 2 and summary["task"] == "depth" and np.isfinite(summary["rmse"])
    import sys
    assert "tensorflow" not in sys.modules


def test_nyu_missing_gives_file_not_found(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match="nyu_depth_v2"):
        nyu_tfds_source("train", data_dir=str(tmp_path))


def test_synthetic_source_records():
    depth = synthetic_source([1, 2], height=16, width=24, task="depth")
    flow = synthetic_source([1], height=16, width=24, task="flow")
    assert len(depth) == 2 and depth[0]["target"].shape == (16, 24, 1)
    assert depth[0]["image"].dtype == np.uint8 and flow[0]["target"].shape == (16, 24, 2)
    with pytest.raises(IndexError):
        depth[2]
