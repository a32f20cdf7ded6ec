"""Synthetic scenes (exact flow, determinism) and the image-only baseline estimator."""

import numpy as np
import pytest

from ppac_jax.data.baseline import (EstimatorConfig, confidence_report, estimate_flow,
                                    estimate_flow_numpy)
from ppac_jax.data.synthetic import make_scene, make_scenes

H, W = 32, 48


def _warp_numpy(img, flow):
    """img sampled at p + flow(p), bilinear, edge-clamped."""
    h, w = img.shape[:2]
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = np.clip(x + flow[..., 0], 0, w - 1.0001)
    sy = np.clip(y + flow[..., 1], 0, h - 1.0001)
    x0, y0 = sx.astype(int), sy.astype(int)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bot = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def test_scene_is_deterministic_and_seed_dependent():
    a, b, c = make_scene(5, height=H, width=W), make_scene(5, height=H, width=W), make_scene(6, height=H, width=W)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["image1"], c["image1"])
    assert a["image1"].shape == (H, W, 3) and a["image1"].dtype == np.float32
    assert a["flow"].shape == (H, W, 2) and a["occlusion"].shape == (H, W)
    assert 0 <= a["image1"].min() and a["image1"].max() <= 1


def test_ground_truth_flow_explains_frame2_where_visible():
    """Warping frame 2 by the true flow reproduces frame 1 on non-occluded pixels, far better
    than warping by zero flow (exactness up to noise and bilinear interpolation)."""
    errs_true, errs_zero = [], []
    for seed in range(4):
        s = make_scene(seed, height=64, width=96)
        vis = ~s["occlusion"]
        warped = _warp_numpy(s["image2"].astype(np.float64), s["flow"])
        errs_true.append(np.abs(warped - s["image1"])[vis].mean())
        errs_zero.append(np.abs(s["image2"] - s["image1"])[vis].mean())
    assert np.mean(errs_true) < 0.02
    assert np.mean(errs_true) < 0.3 * np.mean(errs_zero)


def test_scene_has_motion_boundaries_and_occlusions():
    s = make_scenes(range(4), height=64, width=96)
    assert s["occlusion"].mean() > 0.005
    assert all(len(np.unique(layer)) >= 2 for layer in s["layer"])


def test_bad_size_raises():
    with pytest.raises(ValueError, match="height"):
        make_scene(0, height=8, width=64)


def test_estimator_recovers_a_translation():
    img = make_scene(1, height=H, width=W)["image1"][None]
    moved = np.roll(img, shift=(2, 1), axis=(1, 2))  # content moves by (u, v) = (1, 2)
    flow, conf = estimate_flow(img, moved, config=EstimatorConfig(strides=(4, 2, 1)))
    flow = np.asarray(flow)[0, 6:-6, 6:-6]
    assert conf.shape == (1, H, W, 3)
    np.testing.assert_allclose(np.median(flow.reshape(-1, 2), axis=0), [1.0, 2.0], atol=0.25)


def test_estimator_errors_and_confidences_are_meaningful():
    """Worse at occlusions than elsewhere, better than zero flow, and less confident where wrong."""
    s = make_scenes(range(100, 108), height=H * 2, width=W * 2)
    flow, conf = estimate_flow_numpy(s["image1"], s["image2"])
    assert flow.shape == s["flow"].shape and conf.shape == s["flow"].shape[:3] + (5,)
    assert np.all((conf >= 0) & (conf <= 1))
    err = np.linalg.norm(flow - s["flow"], axis=-1)
    assert err.mean() < np.linalg.norm(s["flow"], axis=-1).mean()
    assert err[s["occlusion"]].mean() > err[~s["occlusion"]].mean()
    corr = np.corrcoef(conf.mean(-1).ravel(), err.ravel())[0, 1]
    assert corr < -0.1
    report = confidence_report(flow, conf, s["flow"])
    assert report["pearson"] == pytest.approx(corr, abs=1e-6)
    assert report["spearman"] < -0.1 and report["aee"] < report["aee_zero_flow"]


def test_estimator_validates_inputs():
    img = np.zeros((1, 30, 48, 3), np.float32)
    with pytest.raises(ValueError, match="divisible"):
        estimate_flow(img, img)
    with pytest.raises(ValueError, match="image1"):
        estimate_flow(img[..., :2], img[..., :2])


# sha256 of every pre-depth output (sorted keys, raw bytes), computed with the generator at
# main 0f47f0e before depth was added: depth must not change any other output
_PRE_DEPTH_HASHES = {
    (0, 96, 128): "8a2cd31fcf5b8a70e29d8c5f4699eebd5cab5e431afea4a54ce669da914354a9",
    (3, 96, 128): "17eb011ea9689868b9be48121ad79e5e5abbd6d27c63a9b9008b54a7d42beb2f",
    (7, 48, 64): "2854ce195cb3dc7e596c20743cc1749a58ee147277dbeac417e36309dd0e82ce",
    (123, 64, 80): "2fe994dc9cabbe989c263839698d7c3d07c69bd7e6b3518ff526445ff58dbec6",
}


@pytest.mark.parametrize("seed, height, width", sorted(_PRE_DEPTH_HASHES))
def test_depth_leaves_other_outputs_unchanged(seed, height, width):
    import hashlib
    scene = make_scene(seed, height=height, width=width)
    digest = hashlib.sha256()
    for key in ("flow", "image1", "image2", "layer", "occlusion"):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(scene[key]).tobytes())
    assert digest.hexdigest() == _PRE_DEPTH_HASHES[(seed, height, width)]


def test_depth_is_per_layer_planes_with_background_farthest():
    for seed in range(3):
        scene = make_scene(seed, height=H, width=W)
        depth, layer = scene["depth"], scene["layer"]
        assert depth.shape == (H, W) and depth.dtype == np.float32
        background = layer == 0
        assert background.any() and (~background).any()
        assert depth[background].min() > depth[~background].max()
        assert 1.0 * 0.75 <= depth.min() and depth.max() <= 10.0 * 1.15
        for k in np.unique(layer):        # a plane: second differences vanish inside a layer
            m = layer == k
            inner = m[:, 1:-1] & m[:, :-2] & m[:, 2:]
            d2 = depth[:, 2:] - 2 * depth[:, 1:-1] + depth[:, :-2]
            assert np.abs(d2[inner]).max(initial=0) < 1e-4
        assert not np.array_equal(depth, make_scene(seed + 10, height=H, width=W)["depth"])
