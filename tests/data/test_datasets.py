"""List-file (HD3 layout) flow datasets on the shipped samples and on a tiny local dataset."""

import os

import numpy as np
import pytest
from PIL import Image

from ppac_jax.data import io
from ppac_jax.data.datasets import KEYS, list_flow_dataset, stack_samples, synthetic_flow_dataset
from tests.golden import shared_dir


def _samples_root():
    root = shared_dir()
    if root is None or not (root / "sample_data" / "lists").is_dir():
        pytest.skip("sample data not found: put shared/ beside the repository or set PPAC_SHARED")
    return root / "sample_data"


@pytest.mark.parametrize("lst, shape", [("MPISintel_sample.txt", (436, 1024)),
                                         ("KITTI_sample.txt", (375, 1242))])
def test_shipped_samples_load(lst, shape):
    root = _samples_root()
    with pytest.raises(FileNotFoundError, match="_prob.npy"):
        list_flow_dataset(str(root / "lists" / lst), estimates_root=str(root / "inputs_flow"))
    (s,) = list_flow_dataset(str(root / "lists" / lst), estimates_root=str(root / "inputs_flow"),
                             missing_confidence="uniform", levels=5)
    assert s["image1"].shape == shape + (3,) and s["flow"].shape == shape + (2,)
    assert s["confidence"].shape == shape + (5,) and s["confidence_source"] == "uniform"
    assert s["valid"].dtype == bool and 0 < s["valid"].mean() <= 1
    epe = np.linalg.norm(s["estimate"] - s["flow"], axis=-1)[s["valid"]].mean()
    assert epe < 3.0  # the shipped HD3 estimates are good estimates of this ground truth


def test_local_hd3_layout_roundtrip(tmp_path):
    data = synthetic_flow_dataset(range(2), height=32, width=48)
    lines = []
    for i in range(2):
        for k in ("image1", "image2"):
            os.makedirs(tmp_path / "img", exist_ok=True)
            Image.fromarray((data[k][i] * 255).round().astype(np.uint8)).save(tmp_path / "img" / f"{k}_{i}.png")
        os.makedirs(tmp_path / "gt", exist_ok=True)
        io.write_flo(tmp_path / "gt" / f"{i}.flo", data["flow"][i])
        os.makedirs(tmp_path / "est" / "img", exist_ok=True)
        io.write_npy(tmp_path / "est" / "img" / f"image1_{i}.npy", data["estimate"][i])
        io.write_npy(tmp_path / "est" / "img" / f"image1_{i}_prob.npy", data["confidence"][i])
        lines.append(f"img/image1_{i}.png img/image2_{i}.png gt/{i}.flo")
    os.makedirs(tmp_path / "lists")
    (tmp_path / "lists" / "train.txt").write_text("\n".join(lines) + "\n")
    samples = list_flow_dataset(str(tmp_path / "lists" / "train.txt"),
                                estimates_root=str(tmp_path / "est"))
    stacked = stack_samples(samples)
    assert set(stacked) == set(KEYS)
    np.testing.assert_allclose(stacked["flow"], data["flow"])
    np.testing.assert_allclose(stacked["estimate"], data["estimate"])
    np.testing.assert_allclose(stacked["confidence"], data["confidence"])
    np.testing.assert_allclose(stacked["image1"], data["image1"], atol=1 / 255)
    assert samples[0]["confidence_source"] == "file" and stacked["valid"].all()


def test_synthetic_dataset_cache(tmp_path):
    a = synthetic_flow_dataset(range(3), height=32, width=48, cache_dir=str(tmp_path))
    (f,) = os.listdir(tmp_path)
    b = synthetic_flow_dataset(range(3), height=32, width=48, cache_dir=str(tmp_path))
    for k in KEYS:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["confidence"].shape == (3, 32, 48, 5)


def test_missing_list_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="list file not found"):
        list_flow_dataset(str(tmp_path / "nope.txt"), estimates_root=str(tmp_path))


def _tiny_hd3_dataset(root, n=4, h=8, w=12, levels=5):
    """Random HD3-layout files: images, .flo ground truth, .npy estimates, _prob.npy."""
    rng = np.random.default_rng(0)
    for d in ("img", "gt", "est/img", "lists"):
        os.makedirs(root / d, exist_ok=True)
    lines = []
    for i in range(n):
        for k in (1, 2):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "img" / f"{i}_{k}.png")
        io.write_flo(root / "gt" / f"{i}.flo", rng.normal(size=(h, w, 2)).astype(np.float32))
        io.write_npy(root / "est" / "img" / f"{i}_1.npy", rng.normal(size=(h, w, 2)))
        io.write_npy(root / "est" / "img" / f"{i}_1_prob.npy", rng.uniform(size=(h, w, levels)))
        lines.append(f"img/{i}_1.png img/{i}_2.png gt/{i}.flo")
    (root / "lists" / "all.txt").write_text("\n".join(lines) + "\n")
    return str(root / "lists" / "all.txt")


def test_tfds_builder_packs_local_files_and_grain_reads_them(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("grain")
    from ppac_jax.data.tfds_builder import PpacFlow, PpacFlowConfig, grain_loader

    lst = _tiny_hd3_dataset(tmp_path / "src")
    config = PpacFlowConfig(name="local", source="lists", train_list=lst, validation_list=lst,
                            estimates_root=str(tmp_path / "src" / "est"))
    builder = PpacFlow(data_dir=str(tmp_path / "tfds"), config=config)
    builder.download_and_prepare(file_format="array_record")
    source = builder.as_data_source(split="train")
    expected = {s["name"]: s for s in list_flow_dataset(lst, estimates_root=str(tmp_path / "src" / "est"))}
    assert len(source) == 4
    for i in range(4):
        rec = source[i]
        match = [s for s in expected.values() if np.array_equal(s["flow"], rec["flow"])]
        assert len(match) == 1
        np.testing.assert_array_equal(rec["estimate"], match[0]["estimate"])
        np.testing.assert_array_equal(rec["confidence"], match[0]["confidence"])
        np.testing.assert_allclose(rec["image1"] / 255.0, match[0]["image1"], atol=1e-6)
    batches = list(grain_loader(source, batch_size=2, seed=0, num_epochs=1))
    assert len(batches) == 2 and batches[0]["image1"].shape == (2, 8, 12, 3)
    assert batches[0]["image1"].dtype == np.float32 and batches[0]["image1"].max() <= 1
    seen = np.concatenate([b["flow"] for b in batches])
    assert sorted(map(float, seen[:, 0, 0, 0])) == sorted(float(s["flow"][0, 0, 0]) for s in expected.values())
    import sys
    assert "tensorflow" not in sys.modules


def test_tfds_mock_data_through_grain():
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("grain")
    from ppac_jax.data.tfds_builder import grain_loader

    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        from ppac_jax.data import tfds_builder

        assert tfds_builder.PpacFlow.name == "ppac_flow"  # importing registers the builder
        source = tfds.data_source("ppac_flow/synthetic_small", split="train")
        assert len(source) == 6
        (batch,) = list(grain_loader(source, batch_size=6, seed=1, num_epochs=1))
        assert batch["flow"].shape == (6, 32, 48, 2) and batch["confidence"].shape == (6, 32, 48, 5)
