"""The PAC demo runs end to end and the edge-aware filter beats the plain Gaussian."""

from experiments import pac_demo


def test_pac_demo_writes_picture_and_beats_gaussian(tmp_path):
    out = tmp_path / "demo.png"
    scores = pac_demo.main(["--out", str(out), "--size", "64"])
    assert out.exists() and out.stat().st_size > 0
    assert scores["pac"] > scores["noisy"] + 3.0
    assert scores["pac"] > scores["gaussian"] + 1.0
