"""Moving weights between the original PyTorch modules and ppac-jax NNX modules.

Convention (every module in :mod:`ppac_jax.nn` that mirrors an original follows it):

* attribute names mirror the original's state-dict names, lists are ``nnx.List``; the path
  ``('layers_joint', 0, 'weight')`` is the original's ``"layers_joint.0.weight"``. A variable
  whose name differs sets ``torch_name`` metadata to its full original name.
* every mirrored ``nnx.Variable`` (``nnx.Param`` or a buffer) carries ``torch_layout`` metadata:

  ============  ==============================  ======================================
  layout        original                        ppac-jax
  ============  ==============================  ======================================
  ``"OIHW"``    conv weight ``[O, I, kh, kw]``  ``[kh, kw, I, O]``
  ``"IOHW"``    transposed ``[I, O, kh, kw]``   ``[kh, kw, I, O]``
  ``"same"``    any                             same shape
  ``"reshape"`` any (``torch_shape`` metadata)  same values, another shape
  ============  ==============================  ======================================

  Variables without ``torch_layout`` are not part of the original state dict.
"""

from __future__ import annotations

from typing import Dict, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx


def _to_ours(value: np.ndarray, layout: str, shape) -> np.ndarray:
    if layout == "OIHW":
        return np.transpose(value, (2, 3, 1, 0))
    if layout == "IOHW":
        return np.transpose(value, (2, 3, 0, 1))
    if layout == "same":
        return value
    if layout == "reshape":
        return np.reshape(value, shape)
    raise ValueError(f"unknown torch_layout {layout!r}")


def _to_torch(value: np.ndarray, layout: str, torch_shape=None) -> np.ndarray:
    if layout == "OIHW":
        return np.transpose(value, (3, 2, 0, 1))
    if layout == "IOHW":
        return np.transpose(value, (2, 3, 0, 1))
    if layout == "same":
        return value
    if layout == "reshape":
        return np.reshape(value, torch_shape)
    raise ValueError(f"unknown torch_layout {layout!r}")


def torch_variables(module: nnx.Module) -> Dict[str, nnx.Variable]:
    """``{original state-dict name: variable}`` for every mirrored variable of ``module``."""
    found = {}
    for path, node in nnx.iter_graph(module):
        if not isinstance(node, nnx.Variable):
            continue
        meta = node.get_metadata()
        if "torch_layout" not in meta:
            continue
        name = meta.get("torch_name") or ".".join(str(p) for p in path)
        found[name] = node
    return found


def load_torch_weights(module: nnx.Module, state_dict: Mapping[str, np.ndarray], *,
                       prefix: str = "", strict: bool = True) -> nnx.Module:
    """Fill ``module`` in place from an original state dict (``{name: array}``).

    Args:
      module: a ppac-jax module mirroring an original module.
      state_dict: original names -> arrays (numpy, or anything ``np.asarray`` accepts); keys
        not starting with ``prefix`` are ignored, ``prefix`` is stripped from the others.
      prefix: e.g. ``"module.refinement_net."``.
      strict: raise if a key is unknown or a mirrored variable has no key.

    The arrays' dtype is kept. Returns ``module``.
    """
    targets = torch_variables(module)
    given = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    unknown = sorted(set(given) - set(targets))
    missing = sorted(set(targets) - set(given))
    if strict and (unknown or missing):
        raise KeyError(f"state dict does not match {type(module).__name__}: "
                       f"unknown keys {unknown}, missing keys {missing}")
    for name, var in targets.items():
        if name not in given:
            continue
        meta = var.get_metadata()
        value = np.asarray(given[name])
        ours = _to_ours(value, meta["torch_layout"], var.get_value().shape)
        if ours.shape != var.get_value().shape:
            raise ValueError(f"{name}: shape {value.shape} (ours {ours.shape}) does not fit the "
                             f"module's {var.get_value().shape}")
        var.set_value(jnp.asarray(ours))
    return module


def export_torch_weights(module: nnx.Module, grads=None) -> Dict[str, np.ndarray]:
    """``{original name: numpy array in the original layout}`` for every mirrored variable.

    With ``grads`` (an ``nnx.State`` of ``module``'s structure, e.g. from ``nnx.grad``) the
    gradients are exported instead, in the same names and layouts
    (see :func:`export_torch_gradients`).
    """
    if not isinstance(module, nnx.Module):
        raise TypeError("export_torch_weights takes an nnx.Module (and optionally its gradients: "
                        "export_torch_weights(module, grads))")
    if grads is not None:
        return export_torch_gradients(module, grads)
    return {name: _to_torch(np.asarray(var.get_value()), var.get_metadata()["torch_layout"],
                            var.get_metadata().get("torch_shape"))
            for name, var in torch_variables(module).items()}


def _torch_paths(module: nnx.Module) -> Dict[tuple, tuple]:
    """``{graph path: (original name, metadata)}`` for every mirrored variable of ``module``."""
    found = {}
    for path, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Variable):
            meta = node.get_metadata()
            if "torch_layout" in meta:
                name = meta.get("torch_name") or ".".join(str(p) for p in path)
                found[tuple(path)] = (name, meta)
    return found


def export_torch_gradients(module: nnx.Module, grads) -> Dict[str, np.ndarray]:
    """Gradients in the original's names and layouts.

    Args:
      module: the module the gradients belong to (gives names and layouts).
      grads: an ``nnx.State`` (e.g. from ``nnx.grad(loss)(module)``) or a nested dict of the
        same structure (``state.to_pure_dict()``); leaves that are not mirrored variables of
        ``module`` are ignored, mirrored variables without a gradient are left out.

    Returns:
      ``{original name: numpy array in the original layout}``, e.g. a ``[1, 1, 7, 7]`` gradient
      for ``layers_joint.0.weight``.
    """
    paths = _torch_paths(module)
    if isinstance(grads, nnx.State):
        flat = [(tuple(p), v) for p, v in nnx.to_flat_state(grads)]
    elif isinstance(grads, Mapping):
        flat = []

        def walk(prefix, node):
            if isinstance(node, Mapping):
                for k, v in node.items():
                    walk(prefix + (k,), v)
            else:
                flat.append((prefix, node))
        walk((), grads)
    else:
        raise TypeError(f"grads must be an nnx.State or a nested dict, got {type(grads).__name__}")
    out = {}
    for path, leaf in flat:
        if path not in paths:
            continue
        name, meta = paths[path]
        value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        out[name] = _to_torch(np.asarray(value), meta["torch_layout"], meta.get("torch_shape"))
    return out
