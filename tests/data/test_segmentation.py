"""Segmentation losses under masks, label checks, built-in scenes, baseline and VOC-layout data."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ppac_jax import losses, metrics
from ppac_jax.data import io, synthetic
from ppac_jax.data import segmentation_datasets as sd
from ppac_jax.data import segmentation_scenes as scenes


@functools.partial(jax.jit, static_argnames=("threshold",))
def _ce_and_grad(logits, labels, threshold):
    return jax.value_and_grad(
        lambda x: losses.cross_entropy(x, labels, threshold=threshold))(logits)


def _case(seed=0, b=2, h=5, w=6, c=4):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((b, h, w, c))
    labels = rng.integers(0, c, (b, h, w))
    labels[rng.uniform(size=labels.shape) < 0.3] = 255
    return logits, labels


@pytest.mark.parametrize("threshold", [None, 0.6])
def test_nonfinite_logits_under_ignored_pixels_change_nothing(threshold):
    logits, labels = _case()
    void = labels == 255
    poisoned = logits.copy()
    poisoned[void] = np.where(np.arange(logits.shape[-1]) % 2, np.nan, np.inf)
    poisoned[void][..., :1] = -np.inf
    v0, g0 = _ce_and_grad(jnp.asarray(logits), jnp.asarray(labels), threshold)
    v1, g1 = _ce_and_grad(jnp.asarray(poisoned), jnp.asarray(labels), threshold)
    assert np.isfinite(v1) and np.all(np.isfinite(g1))
    assert float(v0) == float(v1)
    np.testing.assert_array_equal(np.asarray(g0), np.asarray(g1))
    assert np.all(np.asarray(g1)[void] == 0) and np.any(np.asarray(g1)[~void] != 0)


def test_cross_entropy_hand_computed_and_threshold():
    logits = np.log(np.array([[[[0.5, 0.5], [0.95, 0.05], [0.2, 0.8]]]]))
    labels = np.array([[[0, 0, 255]]])
    ce = -np.log([0.5, 0.95])
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), ce.mean(), rtol=1e-12)
    # fce_0.9: the confident pixel (p = 0.95 > 0.9) drops, mean over all 3 pixels
    np.testing.assert_allclose(losses.cross_entropy(logits, labels, threshold=0.9), ce[0] / 3,
                               rtol=1e-12)
    # PPAC's convention: void is -1, labels may be [B, H, W, 1]
    np.testing.assert_allclose(losses.cross_entropy(logits, np.array([[[[0], [0], [-1]]]]),
                                                    ignore_label=-1), ce.mean(), rtol=1e-12)
    assert float(losses.cross_entropy(logits, np.full((1, 1, 3), 255))) == 0.0


@pytest.mark.parametrize("bad", [2, 7, -3])
def test_labels_outside_classes_raise_one_clear_error(bad):
    logits, labels = _case(c=2)
    labels[0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"labels: values must lie in \[0, 2\)"):
        losses.cross_entropy(logits, labels)


def test_refinement_loss_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="must share B, H, W"):
        losses.segmentation_refinement_loss(lambda *a: a[0], np.zeros((1, 8, 8, 3)),
                                            np.zeros((1, 8, 9, 3)), np.zeros((1, 8, 8), int))


def test_mean_class_accuracy_skips_classes_without_ground_truth():
    cm = metrics.ConfusionMatrix(3).update(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 255]))
    np.testing.assert_allclose(cm.class_accuracy(), [0.5, 1.0, np.nan])
    assert cm.mean_class_accuracy() == pytest.approx(0.75)
    assert cm.pixel_accuracy() == pytest.approx(2 / 3)
    cm.update(np.array([[0, 1]]), np.array([[[0], [0]]]))  # labels [B, H, W, 1]
    np.testing.assert_array_equal(cm.matrix[0], [2, 2, 0])


# ----------------------------------------------------------------------------- scenes


def test_scenes_deterministic_with_classes_and_void_band():
    a = scenes.make_segmentation_scenes(range(12), height=48, width=64)
    b = scenes.make_segmentation_scene(3, height=48, width=64)
    for k in b:
        np.testing.assert_array_equal(a[k][3], b[k])
    labels = a["labels"]
    assert a["image"].dtype == np.float32 and labels.dtype == np.uint8
    assert 0 <= a["image"].min() and a["image"].max() <= 1
    values = set(np.unique(labels).tolist())
    assert values <= set(range(scenes.NUM_CLASSES)) | {255}
    assert 255 in values and len(values - {0, 255}) >= 4
    # void lies on object boundaries: each void pixel has two different layers within 2 px
    obj = a["objects"]
    n, y, x = np.nonzero(labels == 255)
    window = [obj[i, max(0, r - 2):r + 3, max(0, c - 2):c + 3] for i, r, c in zip(n, y, x)]
    assert all(len(np.unique(wi)) > 1 for wi in window)
    # classes differ in their texture statistics: mean colour per class (disc vs shard)
    img = a["image"]
    disc, shard = labels == 1, labels == 5
    assert np.abs(img[disc].mean(0) - img[shard].mean(0)).max() > 0.2


def test_flow_scenes_unchanged_by_the_segmentation_generator():
    before = synthetic.make_scene(5, height=32, width=48)
    scenes.make_segmentation_scene(5, height=32, width=48)
    after = synthetic.make_scene(5, height=32, width=48)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_baseline_segmenter_learns_errs_most_at_boundaries_and_caches(tmp_path):
    train, val, info = sd.synthetic_segmentation_data(
        height=64, width=64, num_segmenter_scenes=32, num_train_scenes=2, num_val_scenes=8,
        segmenter=sd.SegmenterConfig(width=12, steps=200, batch_size=8, lr=5e-3),
        cache_dir=str(tmp_path))
    assert info["num_classes"] == scenes.NUM_CLASSES
    assert val["logits"].shape == (8, 64, 64, scenes.NUM_CLASSES)
    pred, labels = val["logits"].argmax(-1), val["labels"]
    valid = labels != 255
    accuracy = (pred == labels)[valid].mean()
    majority = (labels[valid] == 0).mean()
    assert accuracy > majority + 0.02  # it learned something beyond "all background"
    assert accuracy < 0.99  # and makes mistakes
    # stride-4 features upsampled: errors concentrate near class boundaries
    lab = labels.astype(int)
    edge = np.zeros(lab.shape, bool)
    for axis in (1, 2):
        diff = np.diff(lab, axis=axis) != 0
        pad = [(0, 0)] * 3
        pad[axis] = (1, 0)
        edge |= np.pad(diff, pad)
        pad[axis] = (0, 1)
        edge |= np.pad(diff, pad)
    wrong = (pred != labels) & valid
    assert wrong[edge & valid].mean() > 2 * wrong[~edge & valid].mean()
    # cached: a second call reads the file (same arrays, no training)
    again = sd.synthetic_segmentation_data(
        height=64, width=64, num_segmenter_scenes=32, num_train_scenes=2, num_val_scenes=8,
        segmenter=sd.SegmenterConfig(width=12, steps=200, batch_size=8, lr=5e-3),
        cache_dir=str(tmp_path))
    np.testing.assert_array_equal(again[1]["logits"], val["logits"])


# ----------------------------------------------------------------------------- VOC layout


def voc_folder(root, *, size=(20, 24), num_classes=21, label_value=None, logits_size=None,
               write_logits=True):
    """A one-image VOC-layout folder: JPEGImages, SegmentationClass, list, logits."""
    h, w = size
    os.makedirs(root / "JPEGImages", exist_ok=True)
    os.makedirs(root / "SegmentationClass", exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        root / "JPEGImages" / "img_0.jpg")
    labels = np.zeros((h, w), np.uint8)
    labels[4:12, 5:15] = 3
    labels[4, 5:15] = 255
    if label_value is not None:
        labels[0, 0] = label_value
    io.write_label_png(root / "SegmentationClass" / "img_0.png", labels)
    (root / "val.txt").write_text("img_0\n")
    lh, lw = logits_size or size
    if write_logits:
        os.makedirs(root / "logits" / "JPEGImages", exist_ok=True)
        np.save(root / "logits" / "JPEGImages" / "img_0.npy",
                rng.standard_normal((lh, lw, num_classes)).astype(np.float32))
    return root


def test_voc_layout_reads_image_labels_and_logits(tmp_path):
    root = voc_folder(tmp_path)
    [s] = sd.voc_segmentation_dataset(str(root / "val.txt"), logits_root=str(root / "logits"))
    assert s["image"].shape == (20, 24, 3) and s["labels"].shape == (20, 24)
    assert s["logits"].shape == (20, 24, 21) and s["name"] == "JPEGImages/img_0"
    assert s["labels"][4, 6] == 255 and s["labels"][5, 6] == 3


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(label_value=30), ValueError, r"labels must lie in \[0, 21\) or be 255"),
    (dict(logits_size=(10, 12)), ValueError, "do not match the image size"),
    (dict(write_logits=False), FileNotFoundError, "logits file not found: .*img_0.npy"),
])
def test_voc_layout_bad_input_names_the_file(tmp_path, kwargs, error, message):
    root = voc_folder(tmp_path, **kwargs)
    with pytest.raises(error, match=message) as e:
        sd.voc_segmentation_dataset(str(root / "val.txt"), logits_root=str(root / "logits"))
    assert len(str(e.value).splitlines()) == 1
