"""Wave-2 golden helpers: recipe parameters and per-parameter gradient summaries.

``recipe_uniform`` is the generator of ``golden/README.md`` 9.1 / SPEC_wave2.md section 4
(splitmix64 of ``crc32(key) * 2^32 + index``), used for parameters too large to store.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppac_jax import convert

def recipe_uniform(key: str, shape, lo: float, hi: float) -> np.ndarray:
    """``lo + (hi - lo) * u`` (float64, row-major ``shape``), ``u`` from splitmix64.

    Computed by one jitted XLA loop (needs ``jax_enable_x64``, set by conftest).
    """
    n = int(np.prod(shape, dtype=np.int64))
    base = int(zlib.crc32(key.encode())) << 32
    u = np.asarray(_splitmix_uniform(jnp.uint64(base), n))
    return (lo + (hi - lo) * u).reshape(shape)


@functools.partial(jax.jit, static_argnums=1)
def _splitmix_uniform(base, n):
    z = jnp.arange(n, dtype=jnp.uint64) + base + jnp.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> jnp.uint64(30))) * jnp.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> jnp.uint64(27))) * jnp.uint64(0x94D049BB133111EB)
    z = z ^ (z >> jnp.uint64(31))
    return (z >> jnp.uint64(11)).astype(jnp.float64) * (2.0 ** -53)


def state_dict(golden, dtype) -> dict:
    """Every parameter and buffer of a golden file by original name (stored or recipe)."""
    meta = golden.meta
    sd = {}
    for name in meta.get("param_names", []):
        if f"param_{name}" in golden:
            sd[name] = golden[f"param_{name}"]
        else:
            r = meta["param_recipe"][name]
            sd[name] = recipe_uniform(r["key"], meta["param_shapes"][name], r["lo"], r["hi"])
        sd[name] = np.asarray(sd[name], dtype)
    for key in golden.arrays:
        if key.startswith("buf_"):
            sd[key[4:]] = golden[key]
    return sd


_PERM = {"OIHW": (3, 2, 0, 1), "IOHW": (2, 3, 0, 1)}


def _torch_index(meta, shape, step):
    """Flat indices into our array of ``ravel(original-layout array)[::step]``."""
    layout = meta["torch_layout"]
    if layout not in _PERM:
        return np.arange(0, int(np.prod(shape)), step)
    perm = _PERM[layout]
    torch_shape = tuple(shape[a] for a in perm)
    flat = np.arange(0, int(np.prod(torch_shape)), step)
    torch_idx = np.unravel_index(flat, torch_shape)
    ours = [None] * len(shape)
    for t_axis, o_axis in enumerate(perm):
        ours[o_axis] = torch_idx[t_axis]
    return np.ravel_multi_index(tuple(ours), shape)


def _to_torch(meta, g):
    layout = meta["torch_layout"]
    if layout in _PERM:
        return jnp.transpose(g, _PERM[layout])
    if layout == "reshape":
        return jnp.reshape(g, tuple(meta["torch_shape"]))
    return g


@functools.lru_cache(maxsize=None)
def summary_vjp_runner(graphdef, plan):
    """Jitted ``run(params, rest, x, cot) -> (out, d_x, {name: grad or subsample}, {name: norm})``.

    ``plan``: a :class:`_Plan` of ``(path, name, meta, subsample indices or None)``; subsampled
    gradients are gathered inside the jitted function, so a 134M-parameter model returns a few
    KB.
    """
    entries = {path: (name, meta, idx) for path, name, meta, idx in plan.entries}

    @jax.jit
    def run(params, rest, x, cot):
        def f(params, x):
            return nnx.merge(graphdef, params, rest)(x)
        out, vjp = jax.vjp(f, params, x)
        d_params, d_x = vjp(cot)
        grads, norms = {}, {}
        for path, leaf in nnx.to_flat_state(d_params):
            if tuple(path) not in entries:
                continue
            name, meta, idx = entries[tuple(path)]
            g = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
            norms[name] = jnp.sqrt(jnp.sum(g * g))
            grads[name] = _to_torch(meta, g) if idx is None else jnp.ravel(g)[jnp.asarray(idx)]
        return out, d_x, grads, norms
    return run


def run_summary(module, x, cot, subsample: dict):
    """Forward + VJP of ``module(x)`` (split with ``nnx.Param``) with gradient summaries:
    ``(out, d_x, {name: grad (original layout) or ravel(grad)[::step]}, {name: norm})``."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    entries = []
    for path, (name, meta) in convert._torch_paths(module).items():
        idx = None
        if name in subsample:
            idx = _torch_index(meta, module_shape(module, path), subsample[name])
        entries.append((path, name, meta, idx))
    plan = _Plan(sorted(entries, key=lambda e: e[1]))
    return summary_vjp_runner(graphdef, plan)(params, rest, x, cot)


def module_shape(module, path):
    node = module
    for p in path:
        node = node[p] if isinstance(p, int) else getattr(node, p)
    return tuple(node.get_value().shape)


class _Plan:
    """Hashable by (path, name, subsample step) so equal models share one compiled runner."""

    def __init__(self, entries):
        self.entries = entries
        self._key = tuple((p, n, None if i is None else (len(i), int(i[-1]) if len(i) else -1))
                          for p, n, _, i in entries)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Plan) and self._key == other._key
