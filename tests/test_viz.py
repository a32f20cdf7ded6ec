"""Tests for ppac_jax.viz: the Middlebury wheel, error colours, label colours, panels."""

import numpy as np
import pytest
from PIL import Image

from ppac_jax import viz
from ppac_jax.data import io


def test_color_wheel_segments():
    wheel = viz.color_wheel()
    assert wheel.shape == (55, 3)
    np.testing.assert_array_equal(wheel[0], [255, 0, 0])      # red
    np.testing.assert_array_equal(wheel[15], [255, 255, 0])   # yellow starts YG
    np.testing.assert_array_equal(wheel[21], [0, 255, 0])     # green starts GC
    np.testing.assert_array_equal(wheel[25], [0, 255, 255])   # cyan starts CB
    np.testing.assert_array_equal(wheel[36], [0, 0, 255])     # blue starts BM
    np.testing.assert_array_equal(wheel[49], [255, 0, 255])   # magenta starts MR
    np.testing.assert_array_equal(wheel[1], [255, 17, 0])     # floor(255 / 15)


def test_flow_to_color_directions_and_saturation():
    # left (-x) sits at angle 0 of arctan2(-v, -u): hue index 27 of 54 (between cyan and blue);
    # zero flow is white; full magnitude is the pure hue; beyond max_flow darkened by 0.75.
    flow = np.array([[[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [-2.0, 0.0]]])
    color = viz.flow_to_color(flow, max_flow=1.0).astype(int)
    wheel = viz.color_wheel()
    np.testing.assert_array_equal(color[0, 0], [255, 255, 255])
    np.testing.assert_allclose(color[0, 1], np.floor(wheel[27] * (1 - 1e-16)), atol=1)
    np.testing.assert_allclose(color[0, 2], wheel[0], atol=1)   # +x: red (atan2(-0., -1) = -pi)
    np.testing.assert_allclose(color[0, 3], np.floor((wheel[40] + wheel[41]) / 2), atol=1)
    np.testing.assert_allclose(color[0, 4], np.floor(0.75 * wheel[27]), atol=1)


def test_flow_to_color_normalises_by_max_valid_magnitude():
    flow = np.array([[[2.0, 0.0], [1.0, 0.0], [500.0, 0.0]]])
    valid = np.array([[True, True, False]])
    color = viz.flow_to_color(flow, valid=valid)
    np.testing.assert_array_equal(color, viz.flow_to_color(flow / 2, max_flow=1.0, valid=valid))
    np.testing.assert_array_equal(color[0, 2], [0, 0, 0])
    assert color[0, 1].min() > color[0, 0].min()  # half magnitude: less saturated
    with pytest.raises(ValueError, match="flow"):
        viz.flow_to_color(np.zeros((2, 2, 3)))


def test_error_map_bins():
    gt = np.array([[[100.0, 0.0], [100.0, 0.0], [1.0, 0.0], [0.0, 0.0]]])
    pred = gt.copy()
    pred[0, 1, 0] += 12.0  # e = min(4, 2.4) = 2.4 -> bin [2, 4)
    pred[0, 2, 0] += 0.01  # e = min(0.0033, 0.2) -> first bin
    valid = np.array([[True, True, True, False]])
    colors = viz.error_map(pred, gt, valid)
    np.testing.assert_array_equal(colors[0, 0], viz.ERROR_COLORS[0])
    np.testing.assert_array_equal(colors[0, 1], viz.ERROR_COLORS[6])
    np.testing.assert_array_equal(colors[0, 2], viz.ERROR_COLORS[0])
    np.testing.assert_array_equal(colors[0, 3], [0, 0, 0])


def test_label_to_color_uses_voc_palette():
    labels = np.array([[0, 1], [15, 255]])
    np.testing.assert_array_equal(viz.label_to_color(labels), io.voc_palette()[labels])
    with pytest.raises(ValueError, match="labels"):
        viz.label_to_color(np.array([[256]]))


def test_save_panel_writes_grid(tmp_path):
    a = np.full((10, 20, 3), 200, np.uint8)
    b = np.zeros((6, 8), np.float32)
    panel = viz.save_panel(tmp_path / "sub" / "p.png", [a, b, a, a], ["a", "b", "c", "d"])
    written = np.asarray(Image.open(tmp_path / "sub" / "p.png"))
    np.testing.assert_array_equal(written, panel)
    assert panel.shape[1] == 2 * (20 + 4) + 4 and panel.shape[0] > 2 * 10
    assert (panel == 0).all(-1).sum() >= 6 * 8  # the black image is pasted
    with pytest.raises(ValueError, match="titles"):
        viz.save_panel(tmp_path / "q.png", [a], ["x", "y"])
