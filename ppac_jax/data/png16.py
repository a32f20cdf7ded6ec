"""Minimal lossless PNG codec for 8/16-bit grey/RGB(A) images, pure NumPy + zlib.

Pillow silently truncates 16-bit RGB PNGs (the KITTI flow format) to 8 bits, so
`ppac_jax.data.io` uses this module for them. Only what those files need is supported:
non-interlaced, bit depth 8 or 16, colour types grey (0), RGB (2), grey+alpha (4), RGBA (6).
Chunk CRCs are verified; every defect raises `PngError` naming the file.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

__all__ = ["PngError", "decode_png", "encode_png", "read_png", "write_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


class PngError(ValueError):
    """A PNG file is corrupt, truncated or uses an unsupported feature."""


def _chunks(data: bytes, name: str):
    if data[:8] != _SIGNATURE:
        raise PngError(f"{name}: not a PNG file (bad signature)")
    pos = 8
    while True:
        if pos + 8 > len(data):
            raise PngError(f"{name}: truncated PNG (no IEND chunk)")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise PngError(f"{name}: truncated PNG (chunk {ctype!r} cut short)")
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:end])
        if zlib.crc32(ctype + body) != crc:
            raise PngError(f"{name}: corrupt PNG (CRC mismatch in chunk {ctype!r})")
        yield ctype, body
        if ctype == b"IEND":
            return
        pos = end


def _paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _unfilter(filtered: np.ndarray, ftypes: np.ndarray, name: str) -> np.ndarray:
    """Undo PNG row filters. filtered: [H, W, bpp] uint8; ftypes: [H]. Returns [H, W, bpp] uint8.

    Pixel (r, x) depends on (r, x-1), (r-1, x) and (r-1, x-1), so all pixels of one
    anti-diagonal r + x = d can be reconstructed at once (H + W - 1 vectorised steps).
    """
    h, w, bpp = filtered.shape
    if np.any(ftypes > 4):
        raise PngError(f"{name}: corrupt PNG (row filter type {int(ftypes.max())} > 4)")
    if np.all(ftypes == 0):
        return filtered
    out = np.zeros((h + 1, w + 1, bpp), np.int32)  # zero row/column = PNG's "outside" bytes
    raw = filtered.astype(np.int32)
    ft = ftypes.astype(np.int32)
    for d in range(h + w - 1):
        r = np.arange(max(0, d - w + 1), min(h, d + 1))
        x = d - r
        a, b, c = out[r + 1, x], out[r, x + 1], out[r, x]
        f = ft[r][:, None]
        pred = np.select([f == 1, f == 2, f == 3, f == 4],
                                          [a, b, (a + b) >> 1, _paeth(a, b, c)], 0)
        out[r + 1, x + 1] = (raw[r, x] + pred) & 255
    return out[1:, 1:].astype(np.uint8)


def decode_png(data: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Decode PNG bytes to `[H, W, C]` uint8 or uint16 (C = 1, 2, 3 or 4), no bit loss."""
    header, idat = None, []
    for ctype, body in _chunks(data, name):
        if ctype == b"IHDR":
            if len(body) != 13:
                raise PngError(f"{name}: corrupt PNG (IHDR length {len(body)})")
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
    if header is None:
        raise PngError(f"{name}: corrupt PNG (no IHDR chunk)")
    width, height, depth, ctype, _, _, interlace = header
    if ctype not in _CHANNELS or depth not in (8, 16):
        raise PngError(f"{name}: unsupported PNG (colour type {ctype}, bit depth {depth}); "
                                      "only 8/16-bit grey/RGB(A) are handled here")
    if interlace:
        raise PngError(f"{name}: unsupported PNG (Adam7 interlacing)")
    if width == 0 or height == 0:
        raise PngError(f"{name}: corrupt PNG (size {width}x{height})")
    channels = _CHANNELS[ctype]
    bpp = channels * depth // 8
    stride = width * bpp + 1
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as e:
        raise PngError(f"{name}: corrupt or truncated PNG image data ({e})") from None
    if len(raw) != stride * height:
        raise PngError(f"{name}: corrupt PNG (image data has {len(raw)} bytes, "
                                      f"expected {stride * height})")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride)
    pixels = _unfilter(rows[:, 1:].reshape(height, width, bpp), rows[:, 0], name)
    if depth == 16:
        return pixels.reshape(height, width * bpp).view(">u2").astype(np.uint16).reshape(
                height, width, channels)
    return pixels.reshape(height, width, channels)


def _filter_rows(pixels: np.ndarray, bpp: int) -> np.ndarray:
    """Per-row filter choice among None/Sub/Up/Paeth by the minimum-sum-of-|signed bytes| rule."""
    x = pixels.astype(np.int32)  # [H, W*bpp]
    left = np.pad(x, ((0, 0), (bpp, 0)))[:, :-bpp]
    up = np.pad(x, ((1, 0), (0, 0)))[:-1]
    upleft = np.pad(up, ((0, 0), (bpp, 0)))[:, :-bpp]
    candidates = np.stack([x, x - left, x - up, x - _paeth(left, up, upleft)]) & 255  # types 0,1,2,4
    signed = np.where(candidates > 127, 256 - candidates, candidates)
    choice = np.argmin(signed.sum(-1), axis=0)  # [H]
    rows = candidates[choice, np.arange(x.shape[0])].astype(np.uint8)
    types = np.array([0, 1, 2, 4], np.uint8)[choice]
    return np.concatenate([types[:, None], rows], axis=1)


def encode_png(image: np.ndarray, *, compress_level: int = 6) -> bytes:
    """Encode `[H, W]` or `[H, W, C]` (C in 1..4) uint8 / uint16 as PNG bytes (uint16 -> 16-bit)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4) or 0 in image.shape[:2]:
        raise ValueError(f"image: expected [H, W] or [H, W, 1..4], got shape {image.shape}")
    if image.dtype == np.uint8:
        depth = 8
    elif image.dtype == np.uint16:
        depth = 16
    else:
        raise ValueError(f"image: expected uint8 or uint16, got {image.dtype}")
    height, width, channels = image.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bpp = channels * depth // 8
    data = np.ascontiguousarray(image.astype(">u2") if depth == 16 else image)
    data = data.view(np.uint8).reshape(height, width * bpp)
    filtered = _filter_rows(data, bpp)

    def chunk(ctype_: bytes, body: bytes) -> bytes:
        return struct.pack(">I4s", len(body), ctype_) + body + struct.pack(">I", zlib.crc32(ctype_ + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, 0)
    return (_SIGNATURE + chunk(b"IHDR", ihdr)
                    + chunk(b"IDAT", zlib.compress(filtered.tobytes(), compress_level)) + chunk(b"IEND", b""))


def read_png(path) -> np.ndarray:
    """Read a PNG file losslessly: `[H, W, C]` uint8 or uint16."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_png(data, name=os.fspath(path))


def write_png(path, image: np.ndarray) -> None:
    """Write `[H, W]` / `[H, W, C]` uint8 or uint16 as a PNG file."""
    data = encode_png(image)
    with open(path, "wb") as f:
        f.write(data)
