"""Clean up noisy segmentation logits of the VOC sample with a PAC-CRF; write before/after.

    python -m experiments.crf_demo                       # uses ../shared/sample_data
    python -m experiments.crf_demo --data /path/to/sample_data --out crf_demo.png

The logits are synthetic: the ground-truth one-hot scaled by ``--signal`` plus strong
spatially-correlated noise, so their argmax is a speckled mess. An untrained PAC-CRF (two
``4d`` terms with the ``crf`` initialisation, image colour + position edge features) removes
most of the speckle along image edges. Prints pixel accuracy / mIoU before and after.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

NUM_CLASSES = 21
IGNORE = 255
SAMPLE = "2007_003788"
DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "sample_data"


def voc_palette(n=256):
    """The standard PASCAL VOC colour map ``[n, 3]`` uint8."""
    palette = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def load_sample(data_dir: pathlib.Path):
    from PIL import Image
    image_path = data_dir / "images" / f"{SAMPLE}.jpg"
    label_path = data_dir / "segmentation" / f"{SAMPLE}.png"
    for path in (image_path, label_path):
        if not path.is_file():
            raise FileNotFoundError(f"VOC sample not found: {path} (pass --data DIR pointing at "
                                    f"shared/sample_data)")
    image = np.asarray(Image.open(image_path).convert("RGB"), np.float32)
    label = np.asarray(Image.open(label_path))  # palette indices, never luminance
    return image, label


def noisy_logits(label, signal, noise, seed):
    """One-hot(label) * signal + smooth Gaussian noise (blocks of 8 px, bilinearly upsampled)."""
    import jax
    import jax.numpy as jnp
    rng = np.random.default_rng(seed)
    h, w = label.shape
    coarse = rng.normal(0, noise, (1, h // 8 + 2, w // 8 + 2, NUM_CLASSES)).astype(np.float32)
    smooth = np.asarray(jax.image.resize(jnp.asarray(coarse), (1, h + 16, w + 16, NUM_CLASSES),
                                         "linear"))[:, 8:8 + h, 8:8 + w]
    fine = rng.normal(0, noise, smooth.shape).astype(np.float32)
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[np.where(label == IGNORE, 0, label)]
    return onehot[None] * signal + 0.5 * smooth + fine


def scores(pred, label):
    valid = label != IGNORE
    acc = float(np.mean(pred[valid] == label[valid]))
    ious = []
    for c in range(NUM_CLASSES):
        p, t = (pred == c) & valid, (label == c) & valid
        union = np.sum(p | t)
        if union:
            ious.append(np.sum(p & t) / union)
    return acc, float(np.mean(ious))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA,
                        help="the sample_data folder (default: ../shared/sample_data)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("crf_demo.png"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--signal", type=float, default=2.0)
    parser.add_argument("--noise", type=float, default=1.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        image, label = load_sample(args.data)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    import jax.numpy as jnp
    from PIL import Image

    from ppac_jax import ops
    from ppac_jax.nn.crf import PacCRF

    logits = noisy_logits(label, args.signal, args.noise, args.seed)
    crf = PacCRF(NUM_CLASSES, args.steps, perturbed_init=False, pairwise_kernels=[
        dict(kernel_size=5, dilation=1, compat_type="4d", pairwise_weight=1.0),
        dict(kernel_size=5, dilation=4, compat_type="4d", pairwise_weight=1.0)])
    edges = ops.yxrgb_features(jnp.asarray(image[None]), yx_scale=20.0, rgb_scale=13.0)
    log_q = crf(jnp.asarray(logits), edges)
    before = logits[0].argmax(-1)
    after = np.asarray(log_q[0]).argmax(-1)
    for name, pred in (("noisy logits", before), ("PAC-CRF", after)):
        acc, miou = scores(pred, label)
        print(f"{name:13s} pixel accuracy {acc:.3f}  mIoU {miou:.3f}")

    palette = voc_palette()
    panels = [image.astype(np.uint8), palette[label], palette[before], palette[after]]
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row).save(args.out)
    print(f"wrote {args.out} (image | ground truth | noisy argmax | PAC-CRF)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
