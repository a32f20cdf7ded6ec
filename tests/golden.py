"""Loading the reference golden vectors (``../shared/golden``) in ppac-jax layouts.

The files hold PyTorch layouts (NCHW, OIHW, IOHW, kernels ``[B, Ck, kh, kw, Ho, Wo]``); the
helpers here convert them to NHWC / HWIO / ``[B, Ho, Wo, kh, kw(, C)]``. Tests that need the
files call :func:`golden_files` / :func:`load`, which skip cleanly when ``../shared`` is absent.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

REPO = pathlib.Path(__file__).resolve().parents[1]
# jax.jit compiler options of a test program whose run, not its compilation, dominates: XLA's
# default optimisation level instead of the test workers' level 0 (tests/conftest.py).
OPTIMIZED = {"xla_backend_optimization_level": 3}


def shared_dir() -> pathlib.Path | None:
    """``$PPAC_SHARED`` or ``../shared`` beside the repository, if it exists."""
    env = os.environ.get("PPAC_SHARED")
    for candidate in ([pathlib.Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        if (candidate / "golden").is_dir():
            return candidate
    return None


SKIP_REASON = ("golden vectors not found: set PPAC_SHARED or put the shared/ folder beside the "
               "repository (../shared/golden)")


def golden_files(pattern: str) -> list[str]:
    """Names of golden files matching ``pattern`` (a glob); empty when shared/ is absent."""
    root = shared_dir()
    if root is None:
        return []
    return sorted(p.name for p in (root / "golden").glob(pattern))


def params_or_skip(pattern: str):
    """pytest parameters for golden files, or one skipped parameter when they are missing."""
    names = golden_files(pattern)
    if names:
        return names
    return [pytest.param(None, marks=pytest.mark.skip(reason=SKIP_REASON))]


class Golden:
    """One golden file: ``arrays`` (raw numpy, PyTorch layouts) and ``meta``."""

    def __init__(self, name: str):
        root = shared_dir()
        if root is None:
            pytest.skip(SKIP_REASON)
        with np.load(root / "golden" / name) as z:
            self.arrays = {k: z[k] for k in z.files if k != "meta"}
            self.meta = json.loads(str(z["meta"]))
        self.name = name

    def __getitem__(self, key):
        return self.arrays[key]

    def __contains__(self, key):
        return key in self.arrays

    def get(self, key, default=None):
        return self.arrays.get(key, default)


def nchw(a):
    """NCHW -> NHWC."""
    return np.transpose(a, (0, 2, 3, 1))


def to_nchw(a):
    """NHWC -> NCHW."""
    return np.transpose(a, (0, 3, 1, 2))


def oihw(w):
    """OIHW conv weight -> HWIO."""
    return np.transpose(w, (2, 3, 1, 0))


def to_oihw(w):
    return np.transpose(w, (3, 2, 0, 1))


def iohw(w):
    """IOHW transposed-conv weight -> HWIO (I = input channels of the transposed conv)."""
    return np.transpose(w, (2, 3, 0, 1))


def to_iohw(w):
    return np.transpose(w, (2, 3, 0, 1))


def kernel(k, channel_wise: bool):
    """``[B, Ck, kh, kw, Ho, Wo]`` -> ``[B, Ho, Wo, kh, kw]`` (or ``[..., Ck]`` channel-wise)."""
    k = np.transpose(k, (0, 4, 5, 2, 3, 1))
    return k if channel_wise else k[..., 0]


def to_kernel(k):
    """``[B, Ho, Wo, kh, kw(, C)]`` -> ``[B, Ck, kh, kw, Ho, Wo]``."""
    k = np.asarray(k)
    if k.ndim == 5:
        k = k[..., None]
    return np.transpose(k, (0, 5, 3, 4, 1, 2))


def assert_close(actual, expected, *, rtol=1e-9, atol=1e-11, name=""):
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=name)


@functools.lru_cache(maxsize=None)
def module_vjp_runner(graphdef, *, optimized=False):
    """Jitted ``run(params, rest, inputs, cot) -> (out, d_params, d_inputs)`` for an NNX module.

    One compiled function per module structure, shared by every case that uses it;
    ``optimized``: compiled with :data:`OPTIMIZED`.
    """
    @functools.partial(jax.jit, compiler_options=OPTIMIZED if optimized else None)
    def run(params, rest, inputs, cot):
        def f(params, inputs):
            return nnx.merge(graphdef, params, rest)(*inputs)
        out, vjp = jax.vjp(f, params, inputs)
        return (out,) + vjp(cot)
    return run
