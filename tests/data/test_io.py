"""Tests for ppac_jax.data.io: round trips, shipped samples, corrupt files."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ppac_jax.data import io
from tests.golden import shared_dir


def sample(path):
    root = shared_dir()
    if root is None or not (root / "sample_data").is_dir():
        pytest.skip("sample data not found: put shared/ beside the repository or set PPAC_SHARED")
    return root / "sample_data" / path


# ----------------------------------------------------------------------------- .flo


def test_flo_round_trip_is_lossless(tmp_path):
    rng = np.random.default_rng(0)
    flow = rng.normal(scale=30, size=(7, 13, 2)).astype(np.float32)
    flow[0, 0] = [1e10, 0]  # "unknown" is stored as is
    io.write_flo(tmp_path / "a.flo", flow)
    back = io.read_flo(tmp_path / "a.flo")
    assert back.dtype == np.float32 and back.shape == (7, 13, 2)
    np.testing.assert_array_equal(back, flow)
    valid = io.flo_valid(back)
    assert not valid[0, 0] and valid.sum() == 7 * 13 - 1


def test_flo_layout_is_u_v_interleaved_row_major(tmp_path):
    flow = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    io.write_flo(tmp_path / "a.flo", flow)
    data = (tmp_path / "a.flo").read_bytes()
    assert struct.unpack("<fii", data[:12]) == (202021.25, 3, 2)
    np.testing.assert_array_equal(np.frombuffer(data[12:], "<f4"), np.arange(12))


def test_flo_corrupt_and_truncated_name_the_file(tmp_path):
    io.write_flo(tmp_path / "a.flo", np.zeros((4, 5, 2), np.float32))
    data = (tmp_path / "a.flo").read_bytes()
    (tmp_path / "short.flo").write_bytes(data[:-4])
    (tmp_path / "magic.flo").write_bytes(b"\0\0\0\0" + data[4:])
    (tmp_path / "tiny.flo").write_bytes(data[:6])
    for name in ("short.flo", "magic.flo", "tiny.flo"):
        with pytest.raises(io.CorruptFileError, match=name):
            io.read_flo(tmp_path / name)
    with pytest.raises(ValueError, match="flow"):
        io.write_flo(tmp_path / "b.flo", np.zeros((4, 5, 3)))


# ----------------------------------------------------------------------------- PNG codec


def _png_chunk(kind, body):
    return struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", zlib.crc32(kind + body))


def _raw_png16(image):
    """A minimal 16-bit RGB PNG written by hand (filter 0, one IDAT) for an independent check."""
    h, w, _ = image.shape
    rows = b"".join(b"\x00" + image[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


def _png16_pixels(path):
    """Decode a 16-bit RGB PNG with pypng, independently of data.io."""
    png = pytest.importorskip("png")
    width, height, rows, info = png.Reader(filename=str(path)).read()
    assert info["bitdepth"] == 16 and info["planes"] == 3
    return np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(height, width, 3)


def test_png_corrupt_and_truncated_name_the_file(tmp_path):
    data = _raw_png16(np.arange(60, dtype=np.uint16).reshape(4, 5, 3))
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[40] ^= 0xFF  # inside IDAT: CRC mismatch
    (tmp_path / "crc.png").write_bytes(bytes(flipped))
    (tmp_path / "text.png").write_bytes(b"hello world, not a png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "zlib.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0))
        + _png_chunk(b"IDAT", b"garbage!") + _png_chunk(b"IEND", b""))
    for name in ("cut.png", "crc.png", "text.png", "empty.png", "zlib.png"):
        with pytest.raises(io.CorruptFileError, match=name):
            io.read_kitti_flow(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        io.read_kitti_flow(tmp_path / "missing.png")


def test_kitti_reads_a_hand_made_png_exactly(tmp_path):
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 65536, size=(5, 7, 3)).astype(np.uint16)
    raw[..., 2] = rng.integers(0, 2, size=(5, 7))
    (tmp_path / "h.png").write_bytes(_raw_png16(raw))
    flow, valid = io.read_kitti_flow(tmp_path / "h.png")
    np.testing.assert_array_equal(valid, raw[..., 2] > 0)
    expected = (raw[..., :2].astype(np.float64) - 2 ** 15) / 64
    np.testing.assert_array_equal(flow[valid], expected[valid].astype(np.float32))


# ----------------------------------------------------------------------------- KITTI


def test_kitti_round_trip_to_one_64th_pixel(tmp_path):
    rng = np.random.default_rng(2)
    flow = rng.uniform(-300, 300, size=(10, 12, 2))
    valid = rng.random((10, 12)) > 0.3
    io.write_kitti_flow(tmp_path / "k.png", flow, valid)
    back, back_valid = io.read_kitti_flow(tmp_path / "k.png")
    assert back.dtype == np.float32 and back_valid.dtype == bool
    np.testing.assert_array_equal(back_valid, valid)
    assert np.abs(back[valid] - flow[valid]).max() <= 1 / 128 + 1e-6
    assert np.all(back[~valid] == 0)
    quantised = np.round(flow * 64) / 64  # exactly representable: lossless
    io.write_kitti_flow(tmp_path / "q.png", quantised)
    back, back_valid = io.read_kitti_flow(tmp_path / "q.png")
    assert back_valid.all()
    np.testing.assert_array_equal(back, quantised.astype(np.float32))


def test_kitti_encoding_matches_the_format(tmp_path):
    io.write_kitti_flow(tmp_path / "k.png", np.array([[[1.5, -2.0]]]), np.array([[True]]))
    raw = _png16_pixels(tmp_path / "k.png")
    np.testing.assert_array_equal(raw[0, 0], [32768 + 96, 32768 - 128, 1])


def test_kitti_shipped_sample():
    flow, valid = io.read_kitti_flow(sample("flow/000003_10.png"))
    assert flow.shape == (375, 1242, 2) and valid.shape == (375, 1242)
    assert 0.1 < valid.mean() < 0.6  # sparse LiDAR ground truth
    assert 5 < np.abs(flow[valid]).max() < 300
    np.testing.assert_array_equal(flow[valid] * 64, np.round(flow[valid] * 64))
    # the low bytes, which Pillow drops, carry information
    assert np.any((flow[valid] * 64) % 256 != 0)


def test_kitti_rejects_8bit_png(tmp_path):
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(tmp_path / "eight.png")
    with pytest.raises(io.CorruptFileError, match="eight.png.*16-bit"):
        io.read_kitti_flow(tmp_path / "eight.png")


# ----------------------------------------------------------------------------- Sintel, HD3, images


def test_sintel_mask_and_flow_sample():
    flow, known = io.read_flow(sample("flow/frame_0006.flo"))
    valid = io.read_sintel_valid(sample("invalid/frame_0006.png"))
    assert flow.shape == (436, 1024, 2) and valid.shape == (436, 1024) and valid.dtype == bool
    raw = np.asarray(Image.open(sample("invalid/frame_0006.png")))
    np.testing.assert_array_equal(valid, raw == 0)  # valid = 1 - png/255 on a binary mask
    assert 0.9 < valid.mean() < 1.0 and known.all()


def test_sintel_mask_convention(tmp_path):
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(io.read_sintel_valid(tmp_path / "m.png"), [[True, False], [False, True]])


def test_hd3_estimate_and_confidence(tmp_path):
    rng = np.random.default_rng(3)
    est = rng.normal(size=(5, 6, 2))
    io.write_npy(tmp_path / "e.npy", est)
    np.testing.assert_allclose(io.read_hd3_estimate(tmp_path / "e.npy", channels=2), est, rtol=1e-6)
    assert io.hd3_confidence_path(tmp_path / "e.npy") == str(tmp_path / "e_prob.npy")
    np.save(tmp_path / "e_prob.npy", rng.random((5, 6, 5)))
    prob = io.read_hd3_confidence(tmp_path / "e_prob.npy")
    assert prob.shape == (5, 6, 5) and prob.dtype == np.float32
    with pytest.raises(io.CorruptFileError, match="e.npy"):
        io.read_hd3_estimate(tmp_path / "e.npy", channels=3)
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(io.CorruptFileError, match="bad.npy"):
        io.read_hd3_estimate(tmp_path / "bad.npy")
    flow, valid = io.read_flow(tmp_path / "e.npy")
    assert flow.shape == (5, 6, 2) and valid.all()


def test_read_image_variants_and_truncated(tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "a.png"), rgb)
    grey = io.read_image(tmp_path / "g.png")
    assert grey.shape == (5, 7, 3) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey[..., 1], rgb[..., 0])
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) - 30])
    with pytest.raises(io.CorruptFileError, match="t.png"):
        io.read_image(tmp_path / "t.png")
    with pytest.raises(FileNotFoundError):
        io.read_image(tmp_path / "missing.png")
    image = io.read_image(sample("images/2007_003788.jpg"))
    assert image.shape == (281, 500, 3) and image.dtype == np.uint8


def test_voc_palette_and_label_round_trip(tmp_path):
    palette = io.voc_palette()
    np.testing.assert_array_equal(palette[[0, 1, 2, 3, 15, 255]],
                                  [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0],
                                   [192, 128, 128], [224, 224, 192]])
    labels = np.array([[0, 1, 255], [20, 7, 0]])
    io.write_label_png(tmp_path / "l.png", labels)
    np.testing.assert_array_equal(io.read_label_png(tmp_path / "l.png"), labels)
    assert Image.open(tmp_path / "l.png").mode == "P"
    Image.fromarray(palette[labels]).save(tmp_path / "rgb.png")
    with pytest.raises(io.CorruptFileError, match="rgb.png"):
        io.read_label_png(tmp_path / "rgb.png")


def test_voc_sample_gives_palette_indices():
    labels = io.read_label_png(sample("segmentation/2007_003788.png"))
    assert labels.shape == (281, 500)
    assert set(np.unique(labels)) <= set(range(21)) | {255}
    assert 255 in labels and len(set(np.unique(labels)) - {0, 255}) >= 1


def test_read_list_file(tmp_path):
    (tmp_path / "l.txt").write_text("a.png b.png c.flo m.png\n\n# comment\nx.png y.png z.flo\n")
    samples = io.read_list_file(tmp_path / "l.txt", root="/data")
    assert samples == [("/data/a.png", "/data/b.png", "/data/c.flo", "/data/m.png"),
                       ("/data/x.png", "/data/y.png", "/data/z.flo")]
    (tmp_path / "bad.txt").write_text("a.png\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        io.read_list_file(tmp_path / "bad.txt")
