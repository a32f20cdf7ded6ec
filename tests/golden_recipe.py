"""Wave-2 golden files: recipe parameters (SPEC_wave2.md section 4) and state dicts."""

from __future__ import annotations

import zlib

import numpy as np

_MASK = (1 << 64) - 1


def recipe_uniform(key: str, shape, lo: float, hi: float) -> np.ndarray:
    """The golden files' deterministic uniform parameters (splitmix64 of ``crc32(key)*2^32 + i``)."""
    n = int(np.prod(shape, dtype=np.int64))
    seed = np.uint64(zlib.crc32(key.encode()) & 0xFFFFFFFF)
    with np.errstate(over="ignore"):
        z = (seed << np.uint64(32)) + np.arange(n, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return (lo + (hi - lo) * u).reshape(shape)


def state_dict(g, dtype) -> dict:
    """Every parameter of a wave-2 file: stored ``param_*`` arrays, the rest from the recipe."""
    out = {k[len("param_"):]: g[k] for k in g.arrays if k.startswith(("param_",))}
    out.update({k[len("buf_"):]: g[k] for k in g.arrays if k.startswith("buf_")})
    for name, r in g.meta.get("param_recipe", {}).items():
        value = recipe_uniform(r["key"], g.meta["param_shapes"][name], r["lo"], r["hi"])
        if name in out:
            np.testing.assert_array_equal(value.astype(dtype), out[name])
        out[name] = value.astype(dtype)
    return out
