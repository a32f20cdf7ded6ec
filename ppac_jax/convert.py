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

import io
import os
import pickle
import struct
import zipfile
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
      state_dict: original names -> arrays (numpy, or anything ``np.asarray`` accepts), or
        the path of a PyTorch checkpoint (its ``state_dict`` entry is used, see
        :func:`read_state_dict`); keys not starting with ``prefix`` are ignored, ``prefix`` is
        stripped from the others.
      prefix: e.g. ``"module.refinement_net."``.
      strict: raise if a key is unknown or a mirrored variable has no key.

    The arrays' dtype is kept. Returns ``module``.
    """
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = read_state_dict(state_dict)
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
        try:
            ours = _to_ours(value, meta["torch_layout"], var.get_value().shape)
        except ValueError:       # wrong rank for the transpose, wrong size for the reshape
            ours = value
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


# ---------------------------------------------------------------------------------------------
# reading PyTorch checkpoint files without torch

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128,
    "UntypedStorage": np.uint8,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    """Stands in for ``torch.<X>Storage`` classes inside the pickle (only carries a dtype)."""

    def __init__(self, name):
        self.name = name
        if name == "BFloat16Storage":
            import ml_dtypes  # shipped with jax
            self.dtype = np.dtype(ml_dtypes.bfloat16)
        else:
            self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    """``torch._utils._rebuild_tensor(_v2)`` on a 1-D numpy storage -> numpy array (a copy)."""
    if storage is None:        # first pass over a legacy file: storages not read yet
        return None
    size = tuple(int(s) for s in size)
    if not size:
        return np.array(storage[storage_offset])
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:],
                                           shape=size, strides=tuple(s * item for s in stride))
    return np.array(view)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
    return data


def _numpy_scalar(dtype, data=None):
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


def _safe_globals():
    import codecs
    import collections

    table = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("_codecs", "encode"): codecs.encode,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "complex"): complex,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "scalar")] = _numpy_scalar
        table[(mod, "_reconstruct")] = _reconstruct_ndarray
    return table


def _reconstruct_ndarray(cls, shape, dtype):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("only numpy.ndarray may be reconstructed")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


class _Unpickler(pickle.Unpickler):
    """Whitelist unpickler: tensors, storages, OrderedDict, numpy scalars/arrays; nothing else."""

    def __init__(self, file, load_storage):
        super().__init__(file, encoding="utf-8")
        self._load_storage = load_storage
        self._globals = _SAFE_GLOBALS

    def find_class(self, module, name):
        if module == "torch" and (name.endswith("Storage")):
            if name in _STORAGE_DTYPES or name == "BFloat16Storage":
                return _StorageType(name)
        if (module, name) in self._globals:
            return self._globals[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a checkpoint")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        storage = self._load_storage(str(key), storage_type.dtype, int(numel))
        if storage is not None and view is not None:       # very old files: storage views
            _view_key, offset, view_size = view
            storage = storage[int(offset):int(offset) + int(view_size)]
        return storage


_SAFE_GLOBALS: Dict = {}


def _unpickle(file, load_storage):
    if not _SAFE_GLOBALS:
        _SAFE_GLOBALS.update(_safe_globals())
    return _Unpickler(file, load_storage).load()


def _read_legacy(f) -> object:
    """The pre-1.6 ``torch.save`` format: magic, protocol, sys info, object, keys, storages."""
    for expected in ("magic", "protocol", "sys_info"):
        value = _unpickle(f, None)
        if expected == "magic" and value != _LEGACY_MAGIC:
            raise ValueError("not a PyTorch checkpoint (bad magic number)")
    start = f.tell()
    dtypes = {}

    def note_dtype(key, dtype, numel):
        dtypes[key] = dtype
        return None
    _unpickle(f, note_dtype)                      # pass 1: find the storages' dtypes
    keys = _unpickle(f, None)
    storages = {}
    for key in keys:
        numel = int(np.frombuffer(f.read(8), "<i8")[0])
        dtype = dtypes[key].newbyteorder("<")
        storages[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype).astype(dtypes[key])
    f.seek(start)
    return _unpickle(f, lambda key, dtype, numel: storages[key])   # pass 2: real tensors


def _read_zip(path) -> object:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        if not pkl:
            raise ValueError(f"{path}: zip file without data.pkl is not a PyTorch checkpoint")
        root = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if root + "byteorder" in names:
            byteorder = zf.read(root + "byteorder").decode().strip()
        order = "<" if byteorder == "little" else ">"

        def load_storage(key, dtype, numel):
            raw = zf.read(f"{root}data/{key}")
            return np.frombuffer(raw, dtype.newbyteorder(order))[:numel].astype(dtype)
        with zf.open(pkl[0]) as f:
            return _unpickle(io.BytesIO(f.read()), load_storage)


def read_torch_file(path) -> object:
    """Load a ``torch.save`` file (legacy pickle or zip format) without PyTorch.

    Tensors become numpy arrays; only a whitelist of globals is accepted (tensor rebuilds,
    storages, ``OrderedDict``, numpy scalars/dtypes/arrays); anything else raises
    ``pickle.UnpicklingError``.
    """
    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    with open(path, "rb") as f:
        return _read_legacy(f)


def read_state_dict(path_or_checkpoint) -> Dict[str, np.ndarray]:
    """``{name: numpy array}`` from a checkpoint file or a loaded checkpoint object.

    Uses the checkpoint's ``"state_dict"`` entry when it has one (training checkpoints also
    hold optimizer state etc.), otherwise the object itself.
    """
    obj = path_or_checkpoint
    if isinstance(obj, (str, os.PathLike)):
        obj = read_torch_file(obj)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"no state dict found (got {type(obj).__name__})")
    return {str(k): np.asarray(v) for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------
# the released PPAC refinement checkpoints

PPACNET_PREFIX = "module.refinement_net."


def _indexed(state_dict, branch):
    """``{index: {leaf: array}}`` for keys ``<branch>.<index>.<leaf>``."""
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == branch and parts[1].isdigit():
            out.setdefault(int(parts[1]), {})[parts[2]] = value
    return dict(sorted(out.items()))


def _branch_depths(layers, name):
    depths, sizes = [], set()
    for i, (index, leaves) in enumerate(layers.items()):
        if index != 2 * i or "weight" not in leaves:
            raise ValueError(f"{name}: expected conv layers at indices 0, 2, 4, ..., got "
                             f"{sorted(layers)}")
        w = np.shape(leaves["weight"])
        if depths and depths[-1] != w[1]:
            raise ValueError(f"{name}.{index}.weight {w} does not follow {depths[-1]} channels")
        depths = depths or [w[1]]
        depths.append(w[0])
        sizes.add(w[2])
    return depths, sizes


def infer_ppacnet_config(state_dict: Mapping[str, np.ndarray]) -> dict:
    """Constructor arguments of :class:`~ppac_jax.nn.PPacNet` (or of
    :class:`~ppac_jax.nn.PacNetAdvancedNormalization` when there is no ``network_prob``)
    from the shapes of a state dict without prefix.

    A joint layer is PPAC (``'p'``) iff it has ``weight_normalization``; ``[1, 1, k, k]`` PPAC
    weights mean ``shared_filters``.
    """
    guidance = _indexed(state_dict, "network_guidance")
    prob = _indexed(state_dict, "network_prob")
    joint = _indexed(state_dict, "layers_joint")
    if not guidance or not joint:
        raise ValueError("state dict has no network_guidance / layers_joint entries; wrong prefix?")
    depth_guidance, k_pre = _branch_depths(guidance, "network_guidance")
    depth_prob, k_pre_prob = _branch_depths(prob, "network_prob") if prob else ([], set())
    spec, depth_joint, k_joint, shared = [], [], set(), set()
    for i, (index, leaves) in enumerate(joint.items()):
        if index != i or "weight" not in leaves:
            raise ValueError(f"layers_joint: expected layers 0, 1, ..., got {sorted(joint)}")
        w = np.shape(leaves["weight"])
        out_ch = np.shape(leaves["bias"])[0] if "bias" in leaves else w[0]
        is_pac = "weight_normalization" in leaves
        is_shared = is_pac and w[:2] == (1, 1) and out_ch != 1
        in_ch = out_ch if is_shared else w[1]
        if depth_joint and depth_joint[-1] != in_ch:
            raise ValueError(f"layers_joint.{index} takes {in_ch} channels, previous layer gives "
                             f"{depth_joint[-1]}")
        depth_joint = depth_joint or [in_ch]
        depth_joint.append(out_ch)
        spec.append("p" if is_pac else "c")
        k_joint.add(w[2])
        if is_pac and w[:2] == (1, 1) and out_ch == 1:
            continue        # 1 channel: shared and non-shared filters coincide
        if is_pac:
            shared.add(is_shared)
    if len(k_pre | k_pre_prob) != 1 or len(k_joint) != 1 or len(shared) > 1:
        raise ValueError("inconsistent kernel sizes or filter sharing across layers")
    config = dict(kernel_size_preprocessing=k_pre.pop(), kernel_size_joint=k_joint.pop(),
                  conv_specification="".join(spec), shared_filters=shared.pop() if shared else True,
                  depth_layers_guidance=tuple(depth_guidance),
                  depth_layers_joint=tuple(depth_joint))
    if prob:
        config["depth_layers_prob"] = tuple(depth_prob)
    return config


def load_ppacnet(path_or_state_dict, *, prefix: str | None = None, dtype=None, **kwargs):
    """A ready :class:`~ppac_jax.nn.PPacNet` from a released PPAC checkpoint.

    Args:
      path_or_state_dict: a ``.pth`` file (legacy or zip format; its ``state_dict`` is used) or
        a state dict ``{name: array}``.
      prefix: stripped from the keys; default: ``"module.refinement_net."`` when the keys
        carry it, else none.
      dtype: cast the weights (e.g. ``jnp.float64``); default: keep the checkpoint's dtype.
      **kwargs: further constructor options (e.g. ``impl="patches"``).

    Returns:
      ``PPacNet`` (``PacNetAdvancedNormalization`` for a state dict without ``network_prob``)
      with the architecture inferred by :func:`infer_ppacnet_config`. Call it as
      ``net(estimates, log(max(p, 1e-20)), imagenet_normalised_images)`` (NHWC).
    """
    from ppac_jax.nn.refine import PacNetAdvancedNormalization, PPacNet

    state_dict = read_state_dict(path_or_state_dict)
    if prefix is None:
        prefix = PPACNET_PREFIX if any(k.startswith(PPACNET_PREFIX) for k in state_dict) else ""
    stripped = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if dtype is not None:
        stripped = {k: np.asarray(v).astype(dtype) for k, v in stripped.items()}
    config = infer_ppacnet_config(stripped)
    cls = PPacNet if "depth_layers_prob" in config else PacNetAdvancedNormalization
    net = cls(**config, **kwargs)
    return load_torch_weights(net, stripped)


# ---------------------------------------------------------------------------------------------
# writing state dicts PyTorch can load

_DTYPE_STORAGES = {np.dtype(v): k for k, v in _STORAGE_DTYPES.items() if k != "UntypedStorage"}


class _TorchGlobal:
    """A ``module.name`` reference written as a pickle GLOBAL (no import needed here)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):          # pickle's save_reduce requires a callable
        raise TypeError(f"{self.module}.{self.name} is only a name for the pickle")


class _StorageRef:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _TensorRef:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape

    def __reduce_ex__(self, protocol):
        strides, acc = [], 1
        for n in reversed(self.shape):
            strides.append(acc)
            acc *= n
        import collections
        return (_TorchGlobal("torch._utils", "_rebuild_tensor_v2"),
                (self.storage, 0, tuple(self.shape), tuple(reversed(strides)), False,
                 collections.OrderedDict()))


class _TorchPickler(pickle._Pickler):  # the Python pickler lets us write foreign GLOBALs
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_torch_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))

    dispatch[_TorchGlobal] = _save_torch_global

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            storage = _DTYPE_STORAGES.get(obj.array.dtype)
            if storage is None:
                raise ValueError(f"dtype {obj.array.dtype} has no PyTorch storage type")
            return ("storage", _TorchGlobal("torch", storage), obj.key, "cpu", obj.array.size)
        return None


def save_torch_state_dict(state_dict: Mapping[str, np.ndarray], path, *,
                          archive_name: str = "archive") -> None:
    """Write ``{name: array}`` as a ``torch.save`` zip file of an ``OrderedDict`` of tensors.

    PyTorch users read it with ``torch.load(path)`` and ``module.load_state_dict``; combine with
    :func:`export_torch_weights` to hand weights trained here back to the original code.
    Arrays are stored little-endian, C-contiguous, in their own dtype (float32/float64/...;
    bfloat16 is not supported).
    """
    import collections

    tensors = collections.OrderedDict()
    storages = []
    for i, (name, value) in enumerate(state_dict.items()):
        arr = np.array(value, order="C")   # (ascontiguousarray would make 0-d arrays 1-d)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        ref = _StorageRef(str(i), arr)
        storages.append(ref)
        tensors[str(name)] = _TensorRef(ref, arr.shape)
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(tensors)
    records = [("data.pkl", buf.getvalue()), (".format_version", b"1"),
               (".storage_alignment", b"64"), ("byteorder", b"little")]
    records += [(f"data/{ref.key}", ref.array.tobytes()) for ref in storages]
    records += [("version", b"3\n")]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in records:
            _write_aligned(zf, f"{archive_name}/{name}", data)


def _write_aligned(zf: zipfile.ZipFile, name: str, data: bytes, alignment: int = 64) -> None:
    """Store a record whose data starts at a multiple of ``alignment`` (as ``torch.save`` does,
    padding the local header's extra field), so readers may memory-map the storages."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header = 30 + len(name.encode("utf-8")) + 4     # local header + name + extra field header
    pad = (-(zf.fp.tell() + header)) % alignment
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
    zf.writestr(info, data)
