"""Text inputs of any common shape are read: UTF-8 BOM, CRLF line ends, non-ASCII folder names.

Also a source guard: every text-mode ``open()`` / ``read_text()`` in the library, experiments
and benchmarks names its encoding (never the locale's).
"""

import ast

import numpy as np
import pytest
from PIL import Image

from ppac_jax.data import io
from ppac_jax.data.datasets import list_flow_dataset
from tests.golden import REPO

_REPO = REPO


def _write_dataset(root, *, bom, newline, n=2, h=6, w=7):
    """HD3-layout files under `root` and a list file with the given BOM / line ends."""
    rng = np.random.default_rng(0)
    for d in ("bilder", "vérité", "est/bilder", "lists"):
        (root / d).mkdir(parents=True, exist_ok=True)
    lines, flows = [], []
    for i in range(n):
        for k in (1, 2):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                root / "bilder" / f"{i}_{k}.png")
        flow = rng.normal(size=(h, w, 2)).astype(np.float32)
        flows.append(flow)
        io.write_flo(root / "vérité" / f"flüss_{i}.flo", flow)
        io.write_npy(root / "est" / "bilder" / f"{i}_1.npy", rng.normal(size=(h, w, 2)))
        io.write_npy(root / "est" / "bilder" / f"{i}_1_prob.npy", rng.uniform(size=(h, w, 5)))
        lines.append(f"bilder/{i}_1.png bilder/{i}_2.png vérité/flüss_{i}.flo")
    data = (newline.join(lines) + newline).encode("utf-8")
    (root / "lists" / "train.txt").write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return root / "lists" / "train.txt", flows


@pytest.mark.parametrize("bom", [False, True], ids=["no_bom", "bom"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_list_file_bom_crlf_and_non_ascii_folders(tmp_path, bom, newline):
    root = tmp_path / "données ñ"
    list_file, flows = _write_dataset(root, bom=bom, newline=newline)
    raw = list_file.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") == bom and (b"\r\n" in raw) == (newline == "\r\n")
    samples = io.read_list_file(list_file, root=root)
    assert samples[0][0] == str(root / "bilder" / "0_1.png")  # no '\ufeff' prefix
    assert all(not any(c in p for c in "\ufeff\r") for s in samples for p in s)
    loaded = list_flow_dataset(str(list_file), estimates_root=str(root / "est"))
    assert len(loaded) == 2
    for sample, flow in zip(loaded, flows):
        np.testing.assert_array_equal(sample["flow"], flow)


def test_list_file_that_is_not_utf8_is_a_clear_error(tmp_path):
    (tmp_path / "l.txt").write_bytes("a.png b.png c.flo\n".encode("utf-16"))
    with pytest.raises(ValueError, match="l.txt: not a UTF-8 text file"):
        io.read_list_file(tmp_path / "l.txt")


def test_open_text_reads_bom_and_writes_none(tmp_path):
    path = tmp_path / "t.txt"
    with io.open_text(path, "w") as f:
        f.write("ä\n")
    assert path.read_bytes() == "ä\n".encode()
    path.write_bytes(b"\xef\xbb\xbfx\r\ny\r\n")
    with io.open_text(path) as f:
        assert f.read().splitlines() == ["x", "y"]


def _text_opens_without_encoding(path):
    """(line, call) of text-mode open()/read_text()/write_text() calls without `encoding=`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        keywords = {k.arg for k in node.keywords}
        if name == "open" and isinstance(func, ast.Name):
            mode = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "mode"), None)
            binary = isinstance(mode, ast.Constant) and "b" in str(mode.value)
            if not binary and "encoding" not in keywords:
                found.append((node.lineno, ast.unparse(node)))
        elif name in ("read_text", "write_text") and "encoding" not in keywords:
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_every_text_open_in_the_sources_names_its_encoding():
    files = [p for d in ("ppac_jax", "experiments", "benchmarks") for p in (_REPO / d).rglob("*.py")]
    assert len(files) > 20
    bad = [f"{p.relative_to(_REPO)}:{line}: {call}" for p in files
           for line, call in _text_opens_without_encoding(p)]
    assert not bad, "text files opened with the locale's encoding:\n" + "\n".join(bad)
