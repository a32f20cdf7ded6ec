"""Flow refinement datasets: synthetic scenes with baseline estimates, and HD3-layout lists.

Every dataset is a dict of arrays (or a list of per-sample dicts when image sizes differ) with
keys

* ``image1``, ``image2``: [H, W, 3] float32 in [0, 1];
* ``flow``: [H, W, 2] ground-truth flow; ``valid``: [H, W] bool;
* ``estimate``: [H, W, 2] input flow to refine; ``confidence``: [H, W, L] in [0, 1].
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np

from ppac_jax.data import synthetic
from ppac_jax.data.baseline import EstimatorConfig, estimate_flow_numpy

__all__ = ["synthetic_flow_dataset", "list_flow_dataset", "stack_samples", "KEYS"]

KEYS = ("image1", "image2", "flow", "valid", "estimate", "confidence")


def synthetic_flow_dataset(seeds, *, height: int, width: int,
                           scene_config: synthetic.SceneConfig | None = None,
                           estimator: EstimatorConfig | None = None,
                           cache_dir: str | None = None, log=None) -> dict:
    """Synthetic scenes plus the image-only baseline's estimate and confidences, stacked [N,...].

    With ``cache_dir`` the arrays are stored in (and later read from) an ``.npz`` whose name is a
    hash of every input, so changing any setting regenerates.
    """
    seeds = [int(s) for s in seeds]
    scene_config = scene_config or synthetic.SceneConfig()
    estimator = estimator or EstimatorConfig()
    path = None
    if cache_dir:
        key = repr((seeds, height, width, dataclasses.astuple(scene_config),
                    dataclasses.astuple(estimator), 1))
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        path = os.path.join(cache_dir, f"synthetic_{len(seeds)}_{height}x{width}_{digest}.npz")
        if os.path.exists(path):
            with np.load(path) as f:
                return {k: f[k] for k in KEYS}
    if log:
        log(f"generating {len(seeds)} synthetic scenes of {height}x{width} and baseline estimates")
    scenes = synthetic.make_scenes(seeds, height=height, width=width, config=scene_config)
    estimate, confidence = estimate_flow_numpy(scenes["image1"], scenes["image2"], config=estimator)
    data = {"image1": scenes["image1"], "image2": scenes["image2"], "flow": scenes["flow"],
            "valid": np.ones(scenes["flow"].shape[:3], bool),
            "estimate": estimate.astype(np.float32), "confidence": confidence.astype(np.float32)}
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **data)
        os.replace(tmp, path)
    return data


def list_flow_dataset(list_file: str, *, estimates_root: str, root: str | None = None,
                      missing_confidence: str = "error", levels: int = 5) -> list[dict]:
    """Load an HD3-layout flow list (``image1 image2 flow [invalid_mask]`` per line).

    The estimate of a sample lives at ``<estimates_root>/<image1 path relative to root, without
    extension>.npy`` and its confidences beside it as ``..._prob.npy`` ([H, W, L]).

    Args:
      list_file: the list; paths in it are relative to ``root`` (default: the list's parent
        directory's parent, i.e. the dataset root holding ``lists/``).
      estimates_root: directory of the HD3 ``.npy`` estimates.
      missing_confidence: ``"error"`` (default) or ``"uniform"``: use confidence 1 for all
        ``levels`` levels when a ``_prob.npy`` file is absent (says so in ``confidence_source``).
      levels: L for ``missing_confidence="uniform"``.

    Returns:
      list of per-sample dicts (see module docstring) plus ``name`` and ``confidence_source``.
    """
    from ppac_jax.data import io

    if missing_confidence not in ("error", "uniform"):
        raise ValueError(f"missing_confidence must be 'error' or 'uniform', got {missing_confidence!r}")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"list file not found: {list_file}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(list_file))) if root is None else root
    samples = []
    for paths in io.read_list_file(list_file, root=root, columns=(3, 4)):
        image1 = io.read_image(paths[0]).astype(np.float32) / 255.0
        image2 = io.read_image(paths[1]).astype(np.float32) / 255.0
        flow, valid = io.read_flow(paths[2])
        if len(paths) == 4:
            valid = valid & io.read_sintel_valid(paths[3])
        rel = os.path.relpath(paths[0], root)
        est_path = os.path.join(estimates_root, os.path.splitext(rel)[0] + ".npy")
        if not os.path.isfile(est_path):
            raise FileNotFoundError(f"estimate not found for {rel}: {est_path}")
        estimate = io.read_hd3_estimate(est_path, channels=2)
        prob_path = io.hd3_confidence_path(est_path)
        if os.path.isfile(prob_path):
            confidence, source = io.read_hd3_confidence(prob_path), "file"
        elif missing_confidence == "uniform":
            confidence, source = np.ones(estimate.shape[:2] + (levels,), np.float32), "uniform"
        else:
            raise FileNotFoundError(f"confidence file not found: {prob_path} (pass "
                                    "missing_confidence='uniform' to use constant confidences)")
        shapes = {image1.shape[:2], image2.shape[:2], flow.shape[:2], estimate.shape[:2],
                  confidence.shape[:2]}
        if len(shapes) != 1:
            raise ValueError(f"{rel}: inconsistent sizes {sorted(shapes)} of images/flow/estimate")
        samples.append({"image1": image1, "image2": image2, "flow": flow, "valid": valid,
                        "estimate": estimate, "confidence": confidence,
                        "name": os.path.splitext(rel)[0], "confidence_source": source})
    return samples


def stack_samples(samples: list[dict]) -> dict:
    """Stack per-sample dicts of equal image size into [N, ...] arrays (the ``KEYS`` only)."""
    sizes = {s["image1"].shape for s in samples}
    if len(sizes) != 1:
        raise ValueError(f"samples have different image sizes {sorted(sizes)}; crop them first")
    return {k: np.stack([s[k] for s in samples]) for k in KEYS}
