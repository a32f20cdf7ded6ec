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
from jax import lax

from ppac_jax import convert


def recipe_uniform(key: str, shape, lo: float, hi: float, *, stored_as=None) -> np.ndarray:
    """``lo + (hi - lo) * u`` (float64, row-major ``shape``), ``u`` from splitmix64.

    Computed by one jitted XLA loop (needs ``jax_enable_x64``, set by conftest). With
    ``stored_as = perm`` the values are laid out in memory as ``transpose(result, perm)`` and
    the returned array is a (non-contiguous) view with ``shape``: transposing it back with
    ``perm`` (what ``convert.load_torch_weights`` does for OIHW / IOHW) costs nothing.
    """
    shape = tuple(int(s) for s in shape)
    base = jnp.uint64(int(zlib.crc32(key.encode())) << 32)
    perm = tuple(range(len(shape))) if stored_as is None else tuple(stored_as)
    strides = np.cumprod((shape[1:] + (1,))[::-1])[::-1]
    phys_shape = tuple(shape[a] for a in perm)
    phys_strides = tuple(int(strides[a]) for a in perm)
    u = np.asarray(_recipe_unit(base, phys_shape, phys_strides))
    values = lo + (hi - lo) * u     # in NumPy: XLA may fuse this into an FMA (other rounding)
    return np.transpose(values, np.argsort(perm))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _recipe_unit(base, shape, strides):
    z = jnp.zeros(shape, jnp.uint64)
    for axis, stride in enumerate(strides):
        z = z + lax.broadcasted_iota(jnp.uint64, shape, axis) * jnp.uint64(stride)
    z = z + base + jnp.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> jnp.uint64(30))) * jnp.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> jnp.uint64(27))) * jnp.uint64(0x94D049BB133111EB)
    z = z ^ (z >> jnp.uint64(31))
    return (z >> jnp.uint64(11)).astype(jnp.float64) * (2.0 ** -53)


_STORED_AS = {"OIHW": (2, 3, 1, 0), "IOHW": (2, 3, 0, 1)}


def state_dict(golden, dtype, module=None) -> dict:
    """Every parameter and buffer of a golden file by original name (stored or recipe).

    With ``module``, recipe weights are generated directly in ppac-jax's memory layout (the
    returned arrays are original-layout views), so loading them needs no transposes.
    """
    meta = golden.meta
    layouts = ({n: m["torch_layout"] for n, m in convert._torch_paths(module).values()}
               if module is not None else {})
    sd = {}
    for name in meta.get("param_names", []):
        if f"param_{name}" in golden:
            sd[name] = np.asarray(golden[f"param_{name}"], dtype)
        else:
            r = meta["param_recipe"][name]
            value = recipe_uniform(r["key"], meta["param_shapes"][name], r["lo"], r["hi"],
                                   stored_as=_STORED_AS.get(layouts.get(name)))
            sd[name] = value if value.dtype == dtype else _cast_view(value, dtype)
    for key in golden.arrays:
        if key.startswith("buf_"):
            sd[key[4:]] = golden[key]
    return sd


def _cast_view(view, dtype):
    """``view.astype(dtype)`` keeping its memory order (a cheap cast of a transposed view)."""
    return view.astype(dtype, order="K")


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


@functools.cache
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
