"""Tests for ppac_jax.metrics on small hand-computed cases."""

import jax
import numpy as np
import pytest

from ppac_jax import metrics


def test_epe_hand_computed():
    gt = np.zeros((2, 2, 2))
    pred = np.array([[[3.0, 4.0], [0.0, 1.0]], [[0.0, 0.0], [6.0, 8.0]]])
    # errors 5, 1, 0, 10
    np.testing.assert_allclose(metrics.epe(pred, gt), 4.0)
    valid = np.array([[True, True], [True, False]])
    np.testing.assert_allclose(metrics.epe(pred, gt, valid), 2.0)


def test_epe_batched_is_per_image_and_aee_averages_images():
    gt = np.zeros((2, 1, 2, 2))
    pred = np.array([[[[3.0, 4.0], [0.0, 0.0]]], [[[1.0, 0.0], [1.0, 0.0]]]])
    valid = np.array([[[True, False]], [[True, True]]])
    per_image = metrics.epe(pred, gt, valid)
    np.testing.assert_allclose(per_image, [5.0, 1.0])
    assert metrics.aee(per_image) == pytest.approx(3.0)  # mean of images, not of pixels (7/3)
    assert metrics.aee([per_image[:1], np.float32(1.0), np.nan]) == pytest.approx(3.0)


def test_epe_without_valid_pixels_is_nan_and_aee_skips_it():
    value = metrics.epe(np.ones((1, 1, 2)), np.zeros((1, 1, 2)), np.zeros((1, 1), bool))
    assert np.isnan(value)
    with pytest.raises(ValueError, match="no image"):
        metrics.aee([value])


def test_outlier_rate_needs_both_conditions():
    gt = np.array([[[100.0, 0.0], [10.0, 0.0], [1.0, 0.0], [50.0, 0.0]]])
    pred = gt.copy()
    pred[0, 0, 0] += 4.0   # err 4 > 3 but 4 % of |gt| -> inlier
    pred[0, 1, 0] += 4.0   # err 4 > 3 and 40 % -> outlier
    pred[0, 2, 0] += 2.0   # err 2 <= 3 (200 %) -> inlier
    pred[0, 3, 0] += 3.0   # err 3, not > 3 -> inlier
    np.testing.assert_allclose(metrics.outlier_rate(pred, gt), 25.0)
    valid = np.array([[False, True, True, False]])
    np.testing.assert_allclose(metrics.outlier_rate(pred, gt, valid), 50.0)


def test_flow_metrics_jit_and_validation():
    rng = np.random.default_rng(0)
    pred, gt = rng.normal(size=(2, 2, 3, 4, 2))
    valid = rng.random((2, 3, 4)) > 0.5
    jitted = jax.jit(metrics.epe)(pred, gt, valid)
    np.testing.assert_allclose(jitted, metrics.epe(pred, gt, valid), rtol=1e-12)
    err = np.linalg.norm(pred - gt, axis=-1)
    np.testing.assert_allclose(jitted, [err[b][valid[b]].mean() for b in range(2)], rtol=1e-12)
    with pytest.raises(ValueError, match="valid"):
        metrics.epe(pred, gt, valid[:, :2])
    with pytest.raises(ValueError, match="same shape"):
        metrics.outlier_rate(pred, gt[..., :1])


def test_rmse_hand_computed():
    pred = np.array([[[1.0], [3.0]], [[0.0], [0.0]]])
    target = np.zeros((2, 2, 1))
    np.testing.assert_allclose(metrics.rmse(pred, target), np.sqrt(10 / 4))
    np.testing.assert_allclose(metrics.rmse(pred, target, np.array([[False, True], [True, True]])),
                               np.sqrt(9 / 3))


def test_confusion_matrix_and_miou_hand_computed():
    labels = np.array([[0, 0, 1, 1], [2, 255, 1, 0]])
    pred = np.array([[0, 1, 1, 1], [0, 2, 1, 0]])
    cm = metrics.ConfusionMatrix(4).update(pred, labels)
    expected = np.array([[2, 1, 0, 0], [0, 3, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm.matrix, expected)
    # IoU: class 0: 2 / (3 + 3 - 2) = 0.5; class 1: 3 / (3 + 4 - 3) = 0.75; class 2: 0 / 1 = 0;
    # class 3: empty union, skipped.
    iou = cm.iou()
    np.testing.assert_allclose(iou[:3], [0.5, 0.75, 0.0])
    assert np.isnan(iou[3])
    assert cm.miou() == pytest.approx(1.25 / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)
    np.testing.assert_array_equal(
        jax.jit(metrics.confusion_matrix, static_argnames="num_classes")(pred, labels, num_classes=4),
        expected)


def test_confusion_matrix_streams_and_ignores_minus_one():
    cm = metrics.ConfusionMatrix(3)
    cm.update(np.array([0, 1]), np.array([0, -1]))
    cm.update(np.array([[2]]), np.array([[2]]))
    np.testing.assert_array_equal(cm.matrix, np.diag([1, 0, 1]))
    assert cm.miou() == pytest.approx(1.0)
    cm.merge(metrics.confusion_matrix(np.array([1]), np.array([2]), num_classes=3))
    assert cm.matrix[2, 1] == 1
    with pytest.raises(ValueError, match="labels"):
        cm.update(np.array([0]), np.array([7]))
    with pytest.raises(ValueError, match="pred"):
        cm.update(np.array([3]), np.array([0]))
    cm.reset()
    with pytest.raises(ValueError, match="non-empty union"):
        cm.miou()


def test_boundary_band_hand_computed():
    labels = np.zeros((6, 7), np.int32)
    labels[:, 4:] = 2             # a vertical border between columns 3 and 4
    labels[0, 0] = 255            # a void pixel is a boundary too
    band0 = np.asarray(metrics.boundary_band(labels, width=0))
    expected = np.zeros((6, 7), bool)
    expected[:, 3:5] = True
    expected[:2, :2] = True       # the void pixel and its 3 neighbours
    np.testing.assert_array_equal(band0, expected)
    band1 = np.asarray(metrics.boundary_band(labels[None], width=1))[0]
    assert band1[:, 2:6].all() and not band1[3:, :2].any() and not band1[:, 6].any()
    assert band1[:3, :3].all()
    jitted = jax.jit(lambda l: metrics.boundary_band(l, width=2))(labels[None])
    np.testing.assert_array_equal(jitted[0], metrics.boundary_band(labels, width=2))
    assert not np.asarray(metrics.boundary_band(np.ones((4, 4), np.int32), width=3)).any()
    # boundary mIoU: the confusion matrix restricted to the band
    pred = np.zeros_like(labels)
    cm = metrics.ConfusionMatrix(3).update(pred, labels, valid=band1)
    assert cm.matrix.sum() == band1[labels != 255].sum()
    with pytest.raises(ValueError, match="width"):
        metrics.boundary_band(labels, width=-1)
    with pytest.raises(ValueError, match="labels"):
        metrics.boundary_band(labels[None, None])
