"""File formats for flow and segmentation data. Everything returns NumPy arrays.

Shapes: flow `[H, W, 2]` float32 (u = x, v = y, pixels), validity `[H, W]` bool, images
`[H, W, 3]` uint8 RGB, labels `[H, W]` uint8 palette indices. A corrupt or truncated file
raises `CorruptFileError` (a `ValueError`) naming the file; a missing file raises
`FileNotFoundError`.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError


__all__ = [
        "CorruptFileError", "FLO_MAGIC", "UNKNOWN_FLOW_THRESHOLD", "read_flo", "write_flo",
        "flo_valid", "read_kitti_flow", "write_kitti_flow", "read_sintel_valid", "read_flow",
        "read_hd3_estimate", "read_hd3_confidence", "hd3_confidence_path", "write_npy",
        "read_image", "read_label_png", "write_label_png", "voc_palette", "read_list_file",
        "open_text", "TEXT_ENCODING",
]

FLO_MAGIC = 202021.25
# Middlebury convention: |u| or |v| above this means "unknown flow".
UNKNOWN_FLOW_THRESHOLD = 1e9
_KITTI_OFFSET = 2.0 ** 15
_KITTI_SCALE = 64.0
# Every text file the project reads (list files, split files, configs): UTF-8 with or without
# the byte-order mark some Windows editors write; never the locale's encoding.
TEXT_ENCODING = "utf-8-sig"


class CorruptFileError(ValueError):
    """A data file is corrupt, truncated or not in the expected format."""


def _name(path) -> str:
    return os.fspath(path)


def _check_flow(flow, name="flow") -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[-1] != 2 or 0 in flow.shape:
        raise ValueError(f"{name}: expected shape [H, W, 2], got {flow.shape}")
    if not np.issubdtype(flow.dtype, np.floating) and not np.issubdtype(flow.dtype, np.integer):
        raise ValueError(f"{name}: expected a numeric array, got {flow.dtype}")
    return flow


# ----------------------------------------------------------------------------- .flo


def read_flo(path) -> np.ndarray:
    """Read a Middlebury `.flo` file as `[H, W, 2]` float32 (values > 1e9 mean unknown: see `flo_valid`)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 12:
        raise CorruptFileError(f"{_name(path)}: truncated .flo file ({len(data)} bytes, no header)")
    magic = np.frombuffer(data, "<f4", 1)[0]
    if magic != np.float32(FLO_MAGIC):
        raise CorruptFileError(f"{_name(path)}: not a .flo file (magic {magic!r}, expected {FLO_MAGIC})")
    width, height = (int(v) for v in np.frombuffer(data, "<i4", 2, 4))
    if width <= 0 or height <= 0 or width * height > 1 << 31:
        raise CorruptFileError(f"{_name(path)}: corrupt .flo header (size {width}x{height})")
    expected = 12 + 8 * width * height
    if len(data) != expected:
        raise CorruptFileError(f"{_name(path)}: truncated or corrupt .flo file ({len(data)} bytes, "
                                                      f"expected {expected} for {width}x{height})")
    return np.frombuffer(data, "<f4", 2 * width * height, 12).reshape(height, width, 2).astype(
            np.float32)


def write_flo(path, flow) -> None:
    """Write `[H, W, 2]` flow as a `.flo` file (stored as float32)."""
    flow = _check_flow(flow)
    h, w, _ = flow.shape
    with open(path, "wb") as f:
        f.write(np.array([FLO_MAGIC], "<f4").tobytes())
        f.write(np.array([w, h], "<i4").tobytes())
        f.write(np.ascontiguousarray(flow, "<f4").tobytes())


def flo_valid(flow) -> np.ndarray:
    """`[H, W]` bool: finite flow with |u|, |v| <= 1e9 (the `.flo` "unknown" convention)."""
    flow = _check_flow(flow)
    return np.all(np.isfinite(flow) & (np.abs(flow) <= UNKNOWN_FLOW_THRESHOLD), axis=-1)


# ----------------------------------------------------------------------------- KITTI


def _cv2():
    # OpenCV reads and writes 16-bit colour PNGs losslessly (Pillow truncates them to 8 bits);
    # imported on first use so that importing this module stays light.
    import cv2
    return cv2


def read_kitti_flow(path) -> Tuple[np.ndarray, np.ndarray]:
    """Read a KITTI 16-bit flow PNG (KITTI 2012/2015 flow devkit encoding).

    u = (R - 2^15) / 64, v = (G - 2^15) / 64, valid = B > 0; invalid pixels get flow 0. The
    16-bit channels are decoded losslessly by OpenCV.

    Returns:
        `(flow [H, W, 2] float32, valid [H, W] bool)`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        CorruptFileError: for a corrupt or truncated PNG, or one that is not 16-bit RGB.
    """
    with open(path, "rb") as f:
        data = f.read()
    cv2 = _cv2()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if bgr is None:
        raise CorruptFileError(f"{_name(path)}: not a readable PNG (corrupt or truncated)")
    if bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[-1] != 3:
        channels = 1 if bgr.ndim == 2 else bgr.shape[-1]
        raise CorruptFileError(f"{_name(path)}: not a KITTI flow PNG (expected 16-bit RGB, got "
                               f"{channels} channel(s) of {8 * bgr.dtype.itemsize} bits)")
    png = bgr[..., ::-1]  # OpenCV orders channels B, G, R
    valid = png[..., 2] > 0
    flow = (png[..., :2].astype(np.float32) - _KITTI_OFFSET) / _KITTI_SCALE
    flow[~valid] = 0.0
    return flow, valid


def write_kitti_flow(path, flow, valid=None) -> None:
    """Write flow as a KITTI 16-bit PNG (quantised to 1/64 px, clipped to about ±512 px).

    Args:
        flow: `[H, W, 2]` flow in pixels.
        valid: optional `[H, W]` bool; default: pixels with finite flow.
    """
    flow = _check_flow(flow).astype(np.float64)
    finite = np.all(np.isfinite(flow), axis=-1)
    if valid is None:
        valid = finite
    else:
        valid = np.asarray(valid)
        if valid.shape != flow.shape[:2]:
            raise ValueError(f"valid: expected shape {flow.shape[:2]}, got {valid.shape}")
        valid = valid.astype(bool) & finite
    png = np.zeros(flow.shape[:2] + (3,), np.uint16)
    coded = np.round(np.where(finite[..., None], flow, 0.0) * _KITTI_SCALE + _KITTI_OFFSET)
    png[..., :2] = np.clip(coded, 0, 65535).astype(np.uint16)
    png[..., 2] = valid
    png[~valid, :2] = 0
    cv2 = _cv2()
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(png[..., ::-1]))
    if not ok:
        raise ValueError(f"{_name(path)}: OpenCV could not encode the flow as PNG")
    with open(path, "wb") as f:
        f.write(encoded.tobytes())


# ----------------------------------------------------------------------------- masks, HD3


def _open_image(path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptFileError(f"{_name(path)}: cannot read image ({e})") from None
    return image


def read_sintel_valid(path) -> np.ndarray:
    """Read a Sintel *invalid* mask PNG and return validity `[H, W]` bool (valid = 1 - png/255 > 0.5)."""
    mask = np.asarray(_open_image(path).convert("L"))
    return mask < 128


def read_flow(path) -> Tuple[np.ndarray, np.ndarray]:
    """Read ground-truth or estimated flow by extension (`.flo`, KITTI `.png`, HD3 `.npy`).

    Returns:
        `(flow [H, W, 2] float32, valid [H, W] bool)`.
    """
    ext = os.path.splitext(_name(path))[1].lower()
    if ext == ".flo":
        flow = read_flo(path)
        valid = flo_valid(flow)
        flow = np.where(valid[..., None], flow, np.float32(0))
        return flow, valid
    if ext == ".png":
        return read_kitti_flow(path)
    if ext == ".npy":
        flow = read_hd3_estimate(path, channels=2)
        return flow, np.all(np.isfinite(flow), axis=-1)
    raise ValueError(f"path: unknown flow file extension {ext!r} in {_name(path)} "
                                      "(expected .flo, .png or .npy)")


def _load_npy(path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise CorruptFileError(f"{_name(path)}: cannot read .npy file ({e})") from None
    if not isinstance(array, np.ndarray):
        raise CorruptFileError(f"{_name(path)}: expected a single .npy array, got an archive")
    return array


def read_hd3_estimate(path, *, channels=None) -> np.ndarray:
    """Read an HD3-style `<name>.npy` estimate: `[H, W, C]` float32 (flow: C = 2; logits: C classes)."""
    array = _load_npy(path)
    if array.ndim != 3 or (channels is not None and array.shape[-1] != channels):
        want = f"[H, W, {channels}]" if channels is not None else "[H, W, C]"
        raise CorruptFileError(f"{_name(path)}: expected an estimate of shape {want}, got {array.shape}")
    return array.astype(np.float32)


def hd3_confidence_path(estimate_path) -> str:
    """`<name>.npy` -> `<name>_prob.npy` (the HD3 confidence file beside an estimate)."""
    root, _ = os.path.splitext(_name(estimate_path))
    return root + "_prob.npy"


def read_hd3_confidence(path) -> np.ndarray:
    """Read HD3 `_prob.npy` confidences: `[H, W, L]` float32 in [0, 1] (`[H, W]` -> L = 1)."""
    array = _load_npy(path)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise CorruptFileError(f"{_name(path)}: expected confidences of shape [H, W, L], got {array.shape}")
    return array.astype(np.float32)


def write_npy(path, array) -> None:
    """Write an `[H, W, C]` estimate (HD3 `.npy` convention) as float32."""
    np.save(path, np.asarray(array, np.float32))


# ----------------------------------------------------------------------------- images, labels


def read_image(path) -> np.ndarray:
    """Read an image as `[H, W, 3]` uint8 RGB (grey, palette and alpha images are converted)."""
    return np.asarray(_open_image(path).convert("RGB"), dtype=np.uint8).copy()


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC palette `[num_colors, 3]` uint8 (index bits spread over R, G, B; 255 = void)."""
    index = np.arange(num_colors)
    palette = np.zeros((num_colors, 3), np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            palette[:, channel] |= bit << (7 - shift)
    return palette.astype(np.uint8)


def read_label_png(path) -> np.ndarray:
    """Read a segmentation label PNG as `[H, W]` uint8 class indices.

    Palette (`P`) images give their palette *indices*, never colours; greyscale (`L`) images are
    taken as indices. RGB label images are rejected (their colours are ambiguous).
    """
    image = _open_image(path)
    if image.mode not in ("P", "L"):
        raise CorruptFileError(f"{_name(path)}: expected a palette or greyscale label PNG, got mode "
                                                      f"{image.mode!r}")
    return np.asarray(image, dtype=np.uint8).copy()


def write_label_png(path, labels) -> None:
    """Write `[H, W]` integer labels in [0, 255] as a VOC palette PNG."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or 0 in labels.shape:
        raise ValueError(f"labels: expected shape [H, W], got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels: values must lie in [0, 255], got [{labels.min()}, {labels.max()}]")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(voc_palette().ravel().tolist())
    image.save(path)


# ----------------------------------------------------------------------------- lists


def open_text(path, mode: str = "r"):
    """Open a text file the project reads or writes: UTF-8, a leading BOM accepted (and not
    written), any line ending (LF, CRLF, CR) read as ``\\n``. Use it for every text input.

    Raises:
      FileNotFoundError: if ``path`` does not exist (reading).
      UnicodeDecodeError: if the file is not UTF-8.
    """
    if "b" in mode:
        raise ValueError(f"mode: expected a text mode, got {mode!r}")
    return open(path, mode, encoding="utf-8" if "r" not in mode else TEXT_ENCODING)


def read_list_file(path, *, root=None, columns: Sequence[int] = (2, 3, 4)) -> List[Tuple[str, ...]]:
    """Read a list file: one sample per line, space-separated paths relative to `root`.

    Args:
        path: list file (flow: `image1 image2 flow [mask]`; segmentation: `image label`).
        root: directory the paths are relative to (default: the list file's directory).
        columns: accepted numbers of paths per line.

    Returns:
        One tuple of joined paths per non-empty line (`#` comments skipped). The file is read as
        UTF-8 (`open_text`): a byte-order mark, CRLF line ends and non-ASCII names are fine.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: for a line with a number of paths not in `columns`, or a non-UTF-8 file.
    """
    root = os.path.dirname(os.path.abspath(path)) if root is None else _name(root)
    try:
        return _read_list_lines(path, root, columns)
    except UnicodeDecodeError as e:
        raise ValueError(f"{_name(path)}: not a UTF-8 text file ({e})") from None


def _read_list_lines(path, root, columns):
    samples = []
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) not in columns:
                raise ValueError(f"{_name(path)}:{number}: expected {' or '.join(map(str, columns))} "
                                                  f"paths, got {len(fields)}")
            samples.append(tuple(os.path.join(root, field) for field in fields))
    return samples
