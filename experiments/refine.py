"""Refine flow or segmentation estimates with a pretrained PPacNet.

Refine the shipped Sintel sample (from the repository root, with shared/ beside it) and look at
``outputs/refine/images/frame_0006_panel.png``::

    python -m experiments.refine \\
        --checkpoint ../shared/checkpoints/flow_refinement_sintel_clean.pth \\
        --list ../shared/sample_data/lists/MPISintel_sample.txt --out outputs/refine

One sample without a list file::

    python -m experiments.refine --checkpoint CKPT --image frame.png --estimate frame.npy \\
        [--confidence frame_prob.npy] [--gt frame.flo [--mask invalid.png]] --out outputs/refine

The task comes from the checkpoint (a shipped ``.pth`` or a ppac-jax checkpoint): networks
refining 2 channels refine flow, others refine segmentation logits.

Inputs per sample (HD3 conventions):

* flow: the estimate ``<estimates>/<image1 path without extension>.npy`` (``[H, W, 2]``) and its
  confidences ``..._prob.npy`` (``[H, W, L]``, L = 5 HD3 levels for the shipped checkpoints);
  list lines are ``image1 image2 flow [mask]`` (``flow``: ``.flo`` or KITTI ``.png``, ``mask``: a
  Sintel invalid mask). ``--estimates`` defaults to ``<root>/inputs_flow``.
* segmentation: logits ``<estimates>/<image path without extension>.npy`` (``[H, W, C]``); the
  confidences are ``softmax(logits)``; list lines are ``image label``. ``--estimates``
  defaults to ``<root>/inputs_segmentation``.

**Confidence fallback.** Without a ``_prob.npy`` file (the shipped samples have none) the
refinement says so and uses a *uniform* confidence ``p = --uniform-confidence`` (default 1.0)
for every level and pixel. With p = 1 the probability branch sees log p = 0 everywhere, which
equals its zero padding, so the learned confidence is one constant over the whole image: each
PPAC layer then acts as a normalised PAC (image-guided smoothing) with no border artefacts. The
network was trained with real HD3 confidences, so refined numbers under the fallback are not
the published ones.

Outputs (under ``--out``, mirroring the image path relative to ``--root``): the refined estimate
as ``.npy``, flow as ``.flo`` (or KITTI ``.png`` when the ground truth is one; see
``--flow-format``), segmentation labels as a VOC palette ``.png``, a picture panel
``*_panel.png``, and ``metrics.jsonl`` / ``summary.json``. With ground truth it prints the AEE
and KITTI outlier rate (flow) or the mIoU (segmentation) before and after refinement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

from ppac_jax import metrics, viz
from ppac_jax.data import io

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
_MIN_PROBABILITY = 1e-20  # safe_log floor of the reference


class InputError(Exception):
    """A problem with the user's files or arguments, reported as one line."""


@dataclasses.dataclass
class Sample:
    name: str                      # output path stem, relative to --out
    image: str
    estimate: str
    confidence: Optional[str] = None
    gt: Optional[str] = None
    mask: Optional[str] = None


# ----------------------------------------------------------------------------- model


# Where `python -m experiments.train_flow` exports its best weights inside a workdir.
EXPORTED_WEIGHTS = os.path.join("export", "ppacnet.pth")


def load_model(path: str):
    """Load a PPacNet from a shipped `.pth` or a ppac-jax training workdir.

    A workdir holds the best weights exported by `experiments.train_flow` as
    `export/ppacnet.pth` (the original's state-dict names and layouts).
    """
    from ppac_jax.convert import load_ppacnet

    if os.path.isdir(path):
        exported = os.path.join(path, EXPORTED_WEIGHTS)
        if not os.path.isfile(exported):
            raise InputError(f"{path} is a directory without {EXPORTED_WEIGHTS}: pass a .pth file "
                             "or a workdir of a finished `python -m experiments.train_flow` run")
        path = exported
    try:
        return load_ppacnet(path)
    except FileNotFoundError:
        raise InputError(f"checkpoint not found: {path}") from None
    except Exception as e:  # any failure to parse a user's file is reported as one line
        raise InputError(f"cannot load checkpoint {path}: {type(e).__name__}: {e}") from None


def model_channels(net):
    """`(estimate channels, confidence levels or None)` of a PPAC net, from its original-named weights."""
    from ppac_jax.convert import export_torch_weights
    weights = export_torch_weights(net)
    if "layers_joint.0.bias" not in weights:
        raise InputError("the checkpoint is not a PPAC refinement network (no layers_joint.0.bias)")
    estimate_channels = int(weights["layers_joint.0.bias"].shape[0])
    # PacNetAdvancedNormalization has no probability branch and ignores confidences.
    prob = weights.get("network_prob.0.weight")
    return estimate_channels, (None if prob is None else int(prob.shape[1]))


_jitted_apply = None


def make_refiner(net):
    """A jitted `(estimates, log_probabilities, images) -> refined` for `[1, H, W, C]` inputs."""
    global _jitted_apply
    if _jitted_apply is None:  # one jitted function: nets of one architecture share compilations
        from flax import nnx
        _jitted_apply = nnx.jit(lambda model, e, lp, im: model(e, lp, im))
    return lambda e, lp, im: np.asarray(_jitted_apply(net, e, lp, im))


# ----------------------------------------------------------------------------- inputs


def normalize_image(image: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` uint8 -> ImageNet-normalised float32 (computed in float64, as the reference)."""
    return ((image.astype(np.float64) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def safe_log(p: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(p, _MIN_PROBABILITY)).astype(np.float32)


def log_softmax_probabilities(logits: np.ndarray) -> np.ndarray:
    """`safe_log(softmax(logits))` over the last axis, in float32 (as the reference)."""
    logits = logits.astype(np.float32)
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return safe_log(shifted / shifted.sum(-1, keepdims=True))


def center_crop(array: Optional[np.ndarray], size: Optional[Sequence[int]]):
    if array is None or size is None:
        return array
    h, w = array.shape[:2]
    ch, cw = min(size[0], h), min(size[1], w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return array[y0:y0 + ch, x0:x0 + cw]


def _need(path: Optional[str], what: str) -> None:
    if path is not None and not os.path.isfile(path):
        raise InputError(f"{what} not found: {path}")


def samples_from_list(list_path: str, root: Optional[str], estimates: Optional[str],
                      task: str) -> List[Sample]:
    """Build samples from a list file (see the module docstring for the layout)."""
    _need(list_path, "list file")
    columns = (2, 3, 4) if task == "flow" else (1, 2)
    try:
        lines = io.read_list_file(list_path, root="", columns=columns)
    except ValueError as e:
        raise InputError(str(e)) from None
    if not lines:
        raise InputError(f"list file is empty: {list_path}")
    if root is None:  # the shipped lists live in <root>/lists/
        list_dir = os.path.dirname(os.path.abspath(list_path))
        root = list_dir if os.path.exists(os.path.join(list_dir, lines[0][0])) else os.path.dirname(list_dir)
    if estimates is None:
        estimates = os.path.join(root, "inputs_flow" if task == "flow" else "inputs_segmentation")
    samples = []
    for fields in lines:
        stem = os.path.splitext(os.path.normpath(fields[0]))[0]
        estimate = os.path.join(estimates, stem + ".npy")
        if task == "flow":
            gt = fields[2] if len(fields) > 2 else None
            mask = fields[3] if len(fields) > 3 else None
        else:
            gt, mask = (fields[1] if len(fields) > 1 else None), None
        samples.append(Sample(
            name=stem, image=os.path.join(root, fields[0]), estimate=estimate,
            confidence=io.hd3_confidence_path(estimate) if task == "flow" else None,
            gt=os.path.join(root, gt) if gt else None,
            mask=os.path.join(root, mask) if mask else None))
    return samples


# ----------------------------------------------------------------------------- one sample


def _log(message: str) -> None:
    try:
        from tqdm import tqdm
        tqdm.write(message)
    except ImportError:  # pragma: no cover
        print(message)


def refine_flow(sample: Sample, refiner, levels: int, args, warned: dict) -> dict:
    image = center_crop(io.read_image(sample.image), args.crop)
    estimate = center_crop(io.read_hd3_estimate(sample.estimate, channels=2), args.crop)
    if image.shape[:2] != estimate.shape[:2]:
        raise InputError(f"{sample.estimate}: estimate is {estimate.shape[:2]} but image "
                         f"{sample.image} is {image.shape[:2]}")
    if levels is None:  # the network takes no confidences
        prob = np.ones(image.shape[:2] + (1,), np.float32)
        source = "unused"
    elif sample.confidence and os.path.isfile(sample.confidence):
        prob = center_crop(io.read_hd3_confidence(sample.confidence), args.crop)
        if prob.shape != image.shape[:2] + (levels,):
            raise InputError(f"{sample.confidence}: expected confidences of shape "
                             f"{image.shape[:2] + (levels,)}, got {prob.shape}")
        source = "file"
    else:
        if not warned.get("confidence"):
            _log(f"note: no confidence file ({sample.confidence or 'none given'}); using the "
                 f"documented fallback: uniform confidence p = {args.uniform_confidence} for all "
                 f"{levels} levels (see `python -m experiments.refine --help`)")
            warned["confidence"] = True
        prob = np.full(image.shape[:2] + (levels,), args.uniform_confidence, np.float32)
        source = "uniform"
    refined = refiner(estimate[None], safe_log(prob)[None], normalize_image(image)[None])[0]
    refined = refined.astype(np.float32)

    record = {"name": sample.name, "confidence": source, "height": image.shape[0],
              "width": image.shape[1]}
    gt = valid = None
    if sample.gt:
        gt, valid = io.read_flow(sample.gt)
        if sample.mask:
            mask = io.read_sintel_valid(sample.mask)
            if mask.shape != valid.shape:
                raise InputError(f"{sample.mask}: mask is {mask.shape}, flow is {valid.shape}")
            valid &= mask
        gt, valid = center_crop(gt, args.crop), center_crop(valid, args.crop)
        if gt.shape != estimate.shape:
            raise InputError(f"{sample.gt}: ground truth is {gt.shape[:2]}, estimate "
                             f"{estimate.shape[:2]}")
        for key, flow in (("before", estimate), ("after", refined)):
            record[f"epe_{key}"] = float(metrics.epe(flow, gt, valid))
            record[f"outlier_{key}"] = float(metrics.outlier_rate(flow, gt, valid))

    stem = os.path.join(args.out, sample.name)
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    io.write_npy(stem + ".npy", refined)
    fmt = args.flow_format
    if fmt == "auto":
        fmt = "kitti" if sample.gt and sample.gt.lower().endswith(".png") else "flo"
    if fmt == "kitti":
        io.write_kitti_flow(stem + ".png", refined)
        record["flow_file"] = stem + ".png"
    else:
        io.write_flo(stem + ".flo", refined)
        record["flow_file"] = stem + ".flo"

    if not args.no_panel:
        reference = gt if gt is not None else estimate
        max_flow = float(np.linalg.norm(reference[valid] if valid is not None else reference,
                                        axis=-1).max(initial=1e-6))
        images = [image, viz.flow_to_color(estimate, max_flow=max_flow),
                  viz.flow_to_color(refined, max_flow=max_flow)]
        titles = ["image", "estimate", "refined"]
        if gt is not None:
            images = [image, viz.flow_to_color(gt, max_flow=max_flow, valid=valid)] + images[1:]
            images += [viz.error_map(estimate, gt, valid), viz.error_map(refined, gt, valid)]
            titles = ["image", "ground truth", "estimate", "refined",
                      f"error before: EPE {record['epe_before']:.3f}, Fl {record['outlier_before']:.2f}%",
                      f"error after: EPE {record['epe_after']:.3f}, Fl {record['outlier_after']:.2f}%"]
        viz.save_panel(stem + "_panel.png", images, titles, columns=2, max_width=args.panel_width)
        record["panel"] = stem + "_panel.png"
    return record


def refine_segmentation(sample: Sample, refiner, classes: int, args, confusion) -> dict:
    image = center_crop(io.read_image(sample.image), args.crop)
    logits = center_crop(io.read_hd3_estimate(sample.estimate), args.crop)
    if logits.shape != image.shape[:2] + (classes,):
        raise InputError(f"{sample.estimate}: expected logits of shape "
                         f"{image.shape[:2] + (classes,)}, got {logits.shape}")
    refined = refiner(logits[None], log_softmax_probabilities(logits)[None],
                      normalize_image(image)[None])[0].astype(np.float32)
    before, after = logits.argmax(-1), refined.argmax(-1)
    record = {"name": sample.name, "height": image.shape[0], "width": image.shape[1]}
    labels = None
    if sample.gt:
        labels = center_crop(io.read_label_png(sample.gt), args.crop)
        if labels.shape != before.shape:
            raise InputError(f"{sample.gt}: labels are {labels.shape}, logits {before.shape}")
        for key, pred in (("before", before), ("after", after)):
            cm = metrics.ConfusionMatrix(classes).update(pred, labels)
            confusion[key].merge(cm.matrix)
            record[f"miou_{key}"] = cm.miou()

    stem = os.path.join(args.out, sample.name)
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    io.write_npy(stem + ".npy", refined)
    io.write_label_png(stem + ".png", after)
    record["label_file"] = stem + ".png"
    if not args.no_panel:
        images = [image, viz.label_to_color(before), viz.label_to_color(after)]
        titles = ["image", "estimate", "refined"]
        if labels is not None:
            images.insert(1, viz.label_to_color(labels))
            titles = ["image", "ground truth", f"estimate: mIoU {record['miou_before']:.3f}",
                      f"refined: mIoU {record['miou_after']:.3f}"]
        viz.save_panel(stem + "_panel.png", images, titles, columns=2, max_width=args.panel_width)
        record["panel"] = stem + "_panel.png"
    return record


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.refine",
        description="Refine flow or segmentation estimates with a pretrained PPacNet.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example (the shipped Sintel sample; look at the *_panel.png it writes):\n"
               "  python -m experiments.refine \\\n"
               "      --checkpoint ../shared/checkpoints/flow_refinement_sintel_clean.pth \\\n"
               "      --list ../shared/sample_data/lists/MPISintel_sample.txt --out outputs/refine\n\n"
               "Without a _prob.npy confidence file a uniform confidence is used\n"
               "(--uniform-confidence, default 1.0: the PPAC layers then act as normalised PAC).\n"
               "File layouts: see the docstring of experiments/refine.py.")
    parser.add_argument("--checkpoint", required=True,
                        help="shipped .pth (e.g. flow_refinement_sintel_clean.pth) or ppac-jax checkpoint")
    source = parser.add_argument_group("a list of samples")
    source.add_argument("--list", help="list file: 'image1 image2 flow [mask]' or 'image label' per line")
    source.add_argument("--root", help="directory the list's paths are relative to "
                        "(default: the list's directory, or its parent when the paths are not there)")
    source.add_argument("--estimates", help="directory of <image path>.npy estimates "
                        "(default: <root>/inputs_flow or <root>/inputs_segmentation)")
    single = parser.add_argument_group("one sample")
    single.add_argument("--image", help="guidance image (flow: the first frame)")
    single.add_argument("--estimate", help="estimate .npy: flow [H,W,2] or logits [H,W,C]")
    single.add_argument("--confidence", help="flow confidences <name>_prob.npy [H,W,L] "
                        "(default: beside --estimate, else the uniform fallback)")
    single.add_argument("--gt", help="ground truth: .flo / KITTI .png flow, or a label .png")
    single.add_argument("--mask", help="Sintel invalid-pixel mask .png")
    parser.add_argument("--out", default="outputs/refine", help="output directory (default: %(default)s)")
    parser.add_argument("--uniform-confidence", type=float, default=1.0, metavar="P",
                        help="confidence used when no _prob.npy exists (default: %(default)s)")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"),
                        help="refine only a centred H x W crop (faster on CPU)")
    parser.add_argument("--flow-format", choices=("auto", "flo", "kitti"), default="auto",
                        help="refined flow file: auto = like the ground truth, else .flo")
    parser.add_argument("--panel-width", type=int, default=1600,
                        help="maximum width of the picture panel in pixels (default: %(default)s)")
    parser.add_argument("--no-panel", action="store_true", help="do not write picture panels")
    parser.add_argument("--limit", type=int, help="refine at most this many samples of the list")
    return parser


def _check_args(parser, args) -> None:
    if (args.list is None) == (args.image is None and args.estimate is None):
        parser.error("give either --list or --image with --estimate")
    if args.list is None and (args.image is None or args.estimate is None):
        parser.error("one sample needs both --image and --estimate")
    if args.list is not None and any(
            getattr(args, k) is not None for k in ("image", "estimate", "confidence", "gt", "mask")):
        parser.error("--image/--estimate/--confidence/--gt/--mask cannot be combined with --list")
    if not 0.0 < args.uniform_confidence <= 1.0:
        parser.error(f"--uniform-confidence must lie in (0, 1], got {args.uniform_confidence}")
    if args.crop is not None and min(args.crop) <= 0:
        parser.error(f"--crop sizes must be positive, got {args.crop}")
    if args.limit is not None and args.limit <= 0:
        parser.error(f"--limit must be positive, got {args.limit}")
    if not os.path.isfile(args.checkpoint) and not os.path.isdir(args.checkpoint):
        parser.error(f"checkpoint not found: {args.checkpoint}")
    # Cheap checks before the (slow) model load.
    for flag in ("list", "image", "estimate", "confidence", "gt", "mask"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            parser.error(f"--{flag} file not found: {path}")


def _summary(records: List[dict], task: str, confusion) -> dict:
    summary = {"task": task, "samples": len(records)}
    if task == "flow":
        scored = [r for r in records if "epe_before" in r]
        if scored:
            for key in ("before", "after"):
                summary[f"aee_{key}"] = metrics.aee([r[f"epe_{key}"] for r in scored])
                summary[f"outlier_{key}"] = float(np.nanmean([r[f"outlier_{key}"] for r in scored]))
            summary["scored_samples"] = len(scored)
    elif confusion["before"].matrix.any():
        summary["miou_before"] = confusion["before"].miou()
        summary["miou_after"] = confusion["after"].miou()
    return summary


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the CLI; returns the summary dict (also written to `<out>/summary.json`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        return _run(args)
    except InputError as e:
        raise SystemExit(f"{parser.prog}: error: {e}") from None
    except (FileNotFoundError, io.CorruptFileError) as e:
        raise SystemExit(f"{parser.prog}: error: {e}") from None


def _run(args) -> dict:
    from tqdm import tqdm

    net = load_model(args.checkpoint)
    estimate_channels, levels = model_channels(net)
    task = "flow" if estimate_channels == 2 else "segmentation"
    print(f"checkpoint {args.checkpoint}: {type(net).__name__}, {task} refinement "
          f"({estimate_channels} estimate channels, "
          f"{'no' if levels is None else levels} confidence channels)")

    if args.list is not None:
        samples = samples_from_list(args.list, args.root, args.estimates, task)
        if args.limit:
            samples = samples[:args.limit]
    else:
        name = os.path.splitext(os.path.basename(args.image))[0]
        confidence = args.confidence
        if confidence is None and task == "flow":
            confidence = io.hd3_confidence_path(args.estimate)
        elif confidence is not None and task != "flow":
            raise InputError("--confidence is for flow; segmentation uses softmax(logits)")
        samples = [Sample(name=name, image=args.image, estimate=args.estimate,
                          confidence=confidence, gt=args.gt, mask=args.mask)]
        _need(args.confidence, "confidence file")
    for sample in samples:
        _need(sample.image, "image")
        _need(sample.estimate, "estimate")
        _need(sample.gt, "ground truth")
        _need(sample.mask, "mask")

    os.makedirs(args.out, exist_ok=True)
    refiner = make_refiner(net)
    confusion = {"before": metrics.ConfusionMatrix(estimate_channels),
                 "after": metrics.ConfusionMatrix(estimate_channels)}
    records, warned = [], {}
    start = time.perf_counter()
    with open(os.path.join(args.out, "metrics.jsonl"), "w", encoding="utf-8") as log:
        for sample in tqdm(samples, desc="refine", unit="sample", disable=args.list is None):
            if task == "flow":
                record = refine_flow(sample, refiner, levels, args, warned)
                if "epe_before" in record:
                    _log(f"{sample.name}: EPE {record['epe_before']:.4f} -> {record['epe_after']:.4f}, "
                         f"Fl {record['outlier_before']:.2f}% -> {record['outlier_after']:.2f}%")
            else:
                record = refine_segmentation(sample, refiner, estimate_channels, args, confusion)
                if "miou_before" in record:
                    _log(f"{sample.name}: mIoU {record['miou_before']:.4f} -> {record['miou_after']:.4f}")
            log.write(json.dumps(record) + "\n")
            records.append(record)

    summary = _summary(records, task, confusion)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    with open(os.path.join(args.out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    if "aee_before" in summary:
        print(f"AEE {summary['aee_before']:.4f} -> {summary['aee_after']:.4f}   "
              f"outliers (Fl) {summary['outlier_before']:.2f}% -> {summary['outlier_after']:.2f}%   "
              f"({summary['scored_samples']} sample(s) with ground truth)")
    if "miou_before" in summary:
        print(f"mIoU {summary['miou_before']:.4f} -> {summary['miou_after']:.4f}")
    print(f"wrote {len(records)} refined sample(s), panels and metrics to {args.out}")
    for record in records[:3]:
        if "panel" in record:
            print(f"  panel: {record['panel']}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
