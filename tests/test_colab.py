"""The Colab notebooks' paired .py scripts run top to bottom."""

import pathlib
import runpy

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "colab").glob("*.py"))


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_script_runs(script):
    runpy.run_path(str(script), run_name="__main__")
    assert script.with_suffix(".ipynb").exists(), "pair the script with jupytext --sync"
