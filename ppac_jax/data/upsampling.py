"""Joint-upsampling inputs as the original makes them (NVlabs/pacnet
``task_jointUpsampling/datasets.py``; SPEC_wave2.md 1.8): low-resolution targets
(:func:`get_lowres`) and the per-sample transform (:class:`AssembleJointUpsamplingInputs`).

NumPy, HWC. The ``bilinear`` / ``nearest`` / ``bicubic`` modes use scikit-image's ``resize``
(anti-aliased, reflect mode) because the original's low-resolution targets are defined by it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["LOWRES_MODES", "get_lowres", "AssembleJointUpsamplingInputs"]

LOWRES_MODES = ("center", "last", "bilinear", "nearest", "bicubic")
_ORDER = {"bilinear": 1, "nearest": 0, "bicubic": 3}


def _resize(x, size, order):
    from skimage.transform import resize
    return resize(x, size, order=order, mode="reflect", anti_aliasing=True, preserve_range=True,
                  clip=False)


def _as_hwc(target, name="target"):
    target = np.asarray(target)
    if target.ndim == 2:
        target = target[..., None]
    if target.ndim != 3:
        raise ValueError(f"{name} must be [H, W, C] or [H, W], got shape {target.shape}")
    return target


def get_lowres(target, factor: int, mode: str) -> np.ndarray:
    """Low-resolution version of a dense target (``datasets.get_lowres``).

    ``h = ceil(H/f)``, ``w = ceil(W/f)``; a target whose size is not ``(f*h, f*w)`` is first
    resized to it (scikit-image bilinear resize; upsampling, so no blur). Then

    * ``"center"``: rows/columns ``(f-1)//2 + f*i`` (phase 1 for f=4, 3 for f=8, 7 for f=16);
    * ``"last"``: rows/columns ``f-1 + f*i``;
    * ``"bilinear"`` / ``"nearest"`` / ``"bicubic"``: scikit-image ``resize`` (order 1 / 0 / 3,
      ``mode="reflect"``, ``anti_aliasing=True``, ``preserve_range=True``) to ``(h, w)``.

    Args:
      target: ``[H, W, C]`` (or ``[H, W]``) depth or flow.
      factor: positive int.
      mode: one of :data:`LOWRES_MODES`.

    Returns:
      ``[h, w, C]`` float64.

    Raises:
      ValueError: bad ``target`` shape, ``factor`` or ``mode``.
    """
    target = _as_hwc(target).astype(np.float64)
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")
    if mode not in LOWRES_MODES:
        raise ValueError(f"mode must be one of {LOWRES_MODES}, got {mode!r}")
    f = int(factor)
    big_h, big_w = target.shape[:2]
    h, w = -(-big_h // f), -(-big_w // f)
    if (big_h, big_w) != (f * h, f * w):
        target = _resize(target, (f * h, f * w), _ORDER.get(mode, 1))
    if mode in ("center", "last"):
        phase = (f - 1) // 2 if mode == "center" else f - 1
        return np.ascontiguousarray(target[phase::f, phase::f])
    return _resize(target, (h, w), _ORDER[mode])


class AssembleJointUpsamplingInputs:
    """One training / test sample of joint upsampling (``datasets.AssembleJointUpsamplingInputs``).

    Steps: random ``crop x crop`` window of guidance and target (``crop`` a multiple of
    ``factor``); horizontal flip with probability 0.5 (``flip``); ``low = get_lowres(target)``;
    ``output_crop`` pixels removed from every side of the target; per-channel
    ``raw_range = (min, max)`` of ``low`` (a flat channel widened to ``(min - 0.5, max + 0.5)``)
    and ``low`` normalised to ``(low - min) / (max - min)``; guidance ``/ 255``
    (times 0 with ``zero_guidance``). With ``normalize_target=False`` ``low`` keeps its raw
    values and ``raw_range`` is ``(0, 1)`` per channel (de-normalising is the identity).

    Args (keyword order as the original):
      factor: upsampling factor.
      crop: square crop size (train time) or None.
      flip: random horizontal flips.
      normalize_target: normalise ``low`` by its range.
      output_crop: border ``b`` removed from the returned target (the evaluation border).
      lowres_mode: see :func:`get_lowres`.
      zero_guidance: replace the guidance by zeros (an ablation).

    Call: ``t(guidance [H, W, 3] uint8, target [H, W, C] or [H, W], rng=None)`` ->
    ``(low [h, w, C], guidance [H', W', 3], target [H'-2b, W'-2b, C], raw_range [C, 2])``,
    float32 NumPy; ``rng`` a NumPy Generator for the crop / flip (default: a fresh
    unseeded one, as the original's unseeded ``random``).

    Raises:
      ValueError: bad options, shapes that do not match, or a crop larger than the image.
    """

    def __init__(self, factor, crop=None, flip=False, normalize_target=True, output_crop=0,
                 lowres_mode="center", zero_guidance=False):
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")
        if crop is not None and (int(crop) != crop or crop < 1 or crop % factor):
            raise ValueError(f"crop must be a positive multiple of factor={factor}, got {crop!r}")
        if int(output_crop) != output_crop or output_crop < 0:
            raise ValueError(f"output_crop must be a non-negative int, got {output_crop!r}")
        if lowres_mode not in LOWRES_MODES:
            raise ValueError(f"lowres_mode must be one of {LOWRES_MODES}, got {lowres_mode!r}")
        self.factor = int(factor)
        self.crop = None if crop is None else int(crop)
        self.flip = bool(flip)
        self.normalize_target = bool(normalize_target)
        self.output_crop = int(output_crop)
        self.lowres_mode = lowres_mode
        self.zero_guidance = bool(zero_guidance)

    def __call__(self, guidance, target, rng: Optional[np.random.Generator] = None):
        guidance = np.asarray(guidance)
        target = _as_hwc(target)
        if guidance.ndim != 3 or guidance.shape[-1] != 3:
            raise ValueError(f"guidance must be [H, W, 3], got shape {guidance.shape}")
        if guidance.shape[:2] != target.shape[:2]:
            raise ValueError(f"guidance {guidance.shape[:2]} and target {target.shape[:2]} must "
                             f"have the same height and width")
        if (self.crop or self.flip) and rng is None:
            rng = np.random.default_rng()
        if self.crop is not None:
            big_h, big_w = target.shape[:2]
            if self.crop > min(big_h, big_w):
                raise ValueError(f"crop {self.crop} is larger than the image {big_h}x{big_w}")
            y0 = int(rng.integers(0, big_h - self.crop + 1))
            x0 = int(rng.integers(0, big_w - self.crop + 1))
            guidance = guidance[y0:y0 + self.crop, x0:x0 + self.crop]
            target = target[y0:y0 + self.crop, x0:x0 + self.crop]
        if self.flip and rng.uniform() < 0.5:
            guidance = guidance[:, ::-1]
            target = target[:, ::-1]
        low = get_lowres(target, self.factor, self.lowres_mode)
        b = self.output_crop
        if b:
            target = target[b:target.shape[0] - b, b:target.shape[1] - b]
        if self.normalize_target:
            lo = low.min(axis=(0, 1))
            hi = low.max(axis=(0, 1))
            flat = lo == hi
            lo = np.where(flat, lo - 0.5, lo)
            hi = np.where(flat, hi + 0.5, hi)
            low = (low - lo) / (hi - lo)
        else:
            lo = np.zeros(low.shape[-1])
            hi = np.ones(low.shape[-1])
        guidance = guidance.astype(np.float32) / np.float32(255)
        if self.zero_guidance:
            guidance = guidance * np.float32(0)
        raw_range = np.stack([lo, hi], axis=-1)
        return (low.astype(np.float32), np.ascontiguousarray(guidance),
                np.ascontiguousarray(target, dtype=np.float32), raw_range.astype(np.float32))
