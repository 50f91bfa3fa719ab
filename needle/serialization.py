"""needle.save / needle.load: checkpoints in the safetensors format.

A file holds the tensors of `obj` (a state dict, or nested dicts and lists of
them, such as {"model": model.state_dict(), "optimizer": opt.state_dict()})
under dotted keys, plus one JSON metadata entry, "needle", that describes the
nesting and keeps the non-tensor values (an optimizer's step count, its
learning rate, a config dict). Tensors are raw little-endian bytes, so a file
read back is bit-exact; loading parses JSON and copies bytes, and never runs
code from the file (no pickle).

>>> ndl.save({"model": model.state_dict(), "epoch": 3}, "ckpt.safetensors")
>>> ckpt = ndl.load("ckpt.safetensors")
>>> model.load_state_dict(ckpt["model"])

A safetensors file written by another library (torch's `save_file`) loads as
a flat dict of NumPy arrays, ready for `load_state_dict` or
`needle.interop.from_torch_state_dict`.
"""
from __future__ import annotations

import copyreg
import json
import os
from typing import Any, Dict, Union

import numpy as np
from needle import backend_ndarray
from needle.autograd import Tensor
from needle.backend_ndarray import NDArray
from needle.backend_selection import BACKEND
from needle.interop import ndarray_from_dlpack

__all__ = ["save", "load"]

_FORMAT = "needle-1"
PathLike = Union[str, "os.PathLike[str]"]


def _host_array(obj: Any) -> np.ndarray:
    """obj's data as a C-contiguous NumPy array, without a copy where DLPack allows
    (safetensors copies it into the file at once)."""
    try:
        arr = np.from_dlpack(obj)
        return arr if arr.flags.c_contiguous else arr.copy(order="C")  # 0-d stays 0-d
    except (BufferError, TypeError, RuntimeError):  # not on the CPU: a copy
        return obj.numpy()


def _needle_array(arr: np.ndarray) -> NDArray:
    """An NDArray over a freshly loaded array (zero-copy; a copy if misaligned)."""
    try:
        return ndarray_from_dlpack(arr)
    except BufferError:
        return NDArray(arr, dtype=str(arr.dtype))


def _flatten(obj: Any, key: str, tensors: Dict[str, np.ndarray]) -> Any:
    """The JSON skeleton of obj; its arrays go into `tensors` under dotted keys."""
    if isinstance(obj, (Tensor, NDArray, np.ndarray)):
        if not key:
            raise TypeError("needle.save: the object must be a dict (a state dict), "
                            f"got a bare {type(obj).__name__}")
        if key in tensors:
            raise ValueError(f"needle.save: two tensors would be stored under key '{key}'")
        if isinstance(obj, Tensor):
            tensors[key] = _host_array(obj)
            return {"__tensor__": key, "kind": "Tensor", "requires_grad": obj.requires_grad}
        if isinstance(obj, NDArray):
            tensors[key] = _host_array(obj)
            return {"__tensor__": key, "kind": "NDArray"}
        tensors[key] = obj if obj.flags.c_contiguous else obj.copy(order="C")
        return {"__tensor__": key, "kind": "numpy"}
    if isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"needle.save: dict keys must be str or int, got {k!r}")
            items.append([k, _flatten(v, f"{key}.{k}" if key else str(k), tensors)])
        return {"__dict__": items}
    if isinstance(obj, (list, tuple)):
        seq = [_flatten(v, f"{key}.{i}" if key else str(i), tensors) for i, v in enumerate(obj)]
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": seq}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"needle.save: cannot store {type(obj).__name__} at '{key or '<root>'}' "
                    "(tensors, arrays, dicts, lists, tuples, numbers, strings and None only)")


def save(obj: Dict[str, Any], path: PathLike) -> None:
    """Write obj (a dict of tensors, arrays and plain values, nested) to path."""
    if not isinstance(obj, dict):
        raise TypeError(f"needle.save: expected a dict (a state dict), got {type(obj).__name__}")
    tensors: Dict[str, np.ndarray] = {}
    skeleton = _flatten(obj, "", tensors)
    for key, arr in tensors.items():
        if arr.dtype == object or arr.dtype.kind not in "biuf":
            raise TypeError(f"needle.save: tensor '{key}' has dtype {arr.dtype}, which "
                            "safetensors cannot store")
    meta = {"format": _FORMAT, "needle": json.dumps(skeleton, allow_nan=True)}
    from safetensors.numpy import save_file
    save_file(tensors, os.fspath(path), metadata=meta)


def _device_named(name: str) -> "backend_ndarray.BackendDevice":
    """The device singleton of a name ("cpu", "cuda", "cpu_numpy")."""
    if name not in ("cpu", "cuda", "cpu_numpy"):
        raise ValueError(f"unknown needle device {name!r}")
    return getattr(backend_ndarray, name)()


# pickle and copy.deepcopy of devices (and so of NDArrays, Tensors, Modules that
# hold one): by name, back to the same singleton.
copyreg.pickle(backend_ndarray.BackendDevice, lambda d: (_device_named, (d.name,)))


class _BadFile(ValueError):
    """The file is not valid safetensors."""


class _BadMeta(ValueError):
    """The file is safetensors, but needle's metadata does not describe it."""


def _rebuild(node: Any, tensors: Dict[str, np.ndarray], used: set) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            key = node["__tensor__"]
            if key not in tensors:
                raise _BadMeta(f"the metadata names tensor '{key}', which the file lacks")
            used.add(key)
            arr = tensors[key]
            kind = node.get("kind")
            if kind == "numpy":
                return arr
            if arr.dtype not in (np.float32, np.float64):
                raise _BadMeta(f"tensor '{key}' has dtype {arr.dtype}; a needle {kind} "
                               "holds float32 or float64")
            if kind == "NDArray":
                return _needle_array(arr)
            if kind == "Tensor":
                data = arr if BACKEND == "np" else _needle_array(arr)
                return Tensor.make_const(data, requires_grad=bool(node.get("requires_grad")))
            raise _BadMeta(f"unknown kind {kind!r} for tensor '{key}'")
        if "__dict__" in node:
            return {k: _rebuild(v, tensors, used) for k, v in node["__dict__"]}
        if "__list__" in node:
            return [_rebuild(v, tensors, used) for v in node["__list__"]]
        if "__tuple__" in node:
            return tuple(_rebuild(v, tensors, used) for v in node["__tuple__"])
        raise _BadMeta(f"unexpected metadata entry {node!r}")
    if isinstance(node, list):
        raise _BadMeta("unexpected list in the metadata")
    return node


# Bytes per element of the safetensors dtype strings (the sub-byte float
# formats are left to the safetensors package's own checks).
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
             "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "C64": 8, "F64": 8, "I64": 8, "U64": 8}
_SUBBYTE = {"F4", "F6_E2M3", "F6_E3M2"}


def _check_header(path: str) -> None:
    """Raise _BadFile saying what is wrong with the file's framing and header: the
    safetensors package's own messages do not name the tensor at fault."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _BadFile(f"the file is {size} bytes, too short for the 8-byte header length "
                           "(truncated, or not a safetensors file)")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise _BadFile(f"the header length says {n} bytes but {size - 8} follow "
                           "(truncated, a wrong header length, or not a safetensors file)")
        text = f.read(n)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _BadFile(f"the {n}-byte header is not JSON ({err}): a wrong header length, "
                       "or not a safetensors file") from None
    if not isinstance(header, dict):
        raise _BadFile("the header is not a JSON object")
    data_len, covered = size - 8 - n, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _BadFile(f"tensor '{name}' has a malformed entry {info!r}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _ITEMSIZE and dtype not in _SUBBYTE:
            raise _BadFile(f"tensor '{name}' has an unknown dtype string {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0
                                                  for d in shape):
            raise _BadFile(f"tensor '{name}' has a bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets) or not
                0 <= offsets[0] <= offsets[1]):
            raise _BadFile(f"tensor '{name}' has bad data_offsets {offsets!r}")
        begin, end = offsets
        if dtype in _ITEMSIZE:
            need = _ITEMSIZE[dtype] * int(np.prod(shape, dtype=object))
            if end - begin != need:
                raise _BadFile(f"tensor '{name}' of shape {tuple(shape)} and dtype {dtype} "
                               f"needs {need} bytes, its data_offsets [{begin}, {end}] hold "
                               f"{end - begin}")
        if end > data_len:
            raise _BadFile(f"tensor '{name}' ends at byte {end} of the data, which has "
                           f"{data_len} bytes (truncated)")
        covered += end - begin
    if covered != data_len:
        raise _BadFile(f"the tensors cover {covered} bytes of data but the file holds "
                       f"{data_len} (truncated data, a wrong header length, or bytes of no tensor)")


def load(path: PathLike) -> Any:
    """Read a file written by save() back (bit-exact): Tensors, NDArrays and NumPy
    arrays as they were saved, with the same nesting and plain values.

    A file that is not valid safetensors raises ValueError naming the file and
    the problem; a missing file raises FileNotFoundError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"needle.load: no such file: '{path}'")
    try:
        _check_header(path)
        tensors = load_file(path)
    except (_BadFile, SafetensorError) as err:
        raise ValueError(f"needle.load: '{path}' is not a valid safetensors file: "
                         f"{err}") from None
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    meta = header.get("__metadata__") or {}
    if meta.get("format") != _FORMAT or "needle" not in meta:
        return tensors  # a foreign safetensors file: its arrays by name
    try:
        used: set = set()
        obj = _rebuild(json.loads(meta["needle"]), tensors, used)
        extra = sorted(set(tensors) - used)
        if extra:
            raise _BadMeta(f"tensors {extra} are not named by the metadata")
    except (ValueError, TypeError, KeyError, RecursionError) as err:
        raise ValueError(f"needle.load: '{path}' has bad needle metadata: {err}") from None
    return obj
