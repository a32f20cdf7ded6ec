"""The Colab notebooks: each paired .py runs top to bottom in small mode, saves non-blank
pictures, and its .ipynb holds the same cells (jupytext pairing).

Every notebook reads ``PPAC_NOTEBOOK_SMALL=1`` (tiny sizes and step counts) and
``PPAC_NOTEBOOK_OUT`` (a folder: every figure it shows with ``show(fig, "name")`` is also saved
there as ``name.png``). Pictures named ``checkpoint_*`` need the original Sintel checkpoint
(``PPAC_SINTEL_CHECKPOINT``) and are required only when that file is present.
"""

import os
import pathlib
import re
import subprocess
import sys

import jupytext
import numpy as np
import pytest
from PIL import Image

from tests.golden import REPO, shared_dir
from tests.subprocess_runs import xla_flags

ROOT = REPO
NOTEBOOKS = sorted((ROOT / "colab").glob("*.py"))
SHOW = re.compile(r"""\bshow\(\s*\w+\s*,\s*["']([\w.-]+)["']""")


def _checkpoint():
    root = shared_dir()
    path = root / "checkpoints" / "flow_refinement_sintel_clean.pth" if root else None
    return path if path is not None and path.is_file() else None


def picture_names(script: pathlib.Path) -> list[str]:
    """The names a notebook passes to ``show(fig, "name")``, in order."""
    return SHOW.findall(script.read_text())


def test_every_notebook_is_paired_and_shows_pictures():
    assert NOTEBOOKS, "no colab/*.py found"
    for script in NOTEBOOKS:
        assert script.with_suffix(".ipynb").exists(), f"{script.name}: pair it (jupytext --sync)"
        assert picture_names(script), f"{script.name}: no show(fig, 'name') call"


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_ipynb_in_sync_with_py(script):
    """Same cell types and sources in both files (what `jupytext --sync` keeps equal)."""
    from_py = jupytext.read(script, fmt="py:percent")
    from_ipynb = jupytext.read(script.with_suffix(".ipynb"))
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    assert cells(from_ipynb) == cells(from_py), (
        f"{script.with_suffix('.ipynb').name} differs from {script.name}: run "
        f"`jupytext --sync colab/{script.name}`")
    first = from_py.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), (
        "a notebook opens with a markdown cell saying what it shows")
    assert any("pip install" in c.source for c in from_py.cells[:3] if c.cell_type == "code"), (
        "a notebook has an install cell near the top")


def _non_blank(path: pathlib.Path) -> float:
    """Fraction of pixels that differ from the picture's most common (background) colour."""
    rgb = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    background = colours[np.argmax(counts)]
    return float(np.mean(np.any(rgb != background, axis=1)))


@pytest.mark.slow
@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_small_mode_and_saves_pictures(script, tmp_path):
    out = tmp_path / "pictures"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), PPAC_NOTEBOOK_SMALL="1",
               PPAC_NOTEBOOK_OUT=str(out), MPLBACKEND="Agg",
               TMPDIR=str(tmp_path),  # the notebooks' training workdirs (tempfile) go here
               XLA_FLAGS=xla_flags())
    checkpoint = _checkpoint()
    if checkpoint is not None:
        env["PPAC_SINTEL_CHECKPOINT"] = str(checkpoint)
    else:
        env.pop("PPAC_SINTEL_CHECKPOINT", None)
    # a fresh interpreter, as on Colab (the test session runs with jax_enable_x64)
    run = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{script.name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    for name in picture_names(script):
        path = out / f"{name}.png"
        if name.startswith("checkpoint_") and checkpoint is None:
            assert not path.exists()
            continue
        assert path.is_file(), f"{script.name}: picture {name}.png was not saved"
        assert _non_blank(path) > 0.05, f"{script.name}: picture {name}.png is (nearly) blank"
