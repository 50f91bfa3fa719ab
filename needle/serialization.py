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
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from needle import backend_ndarray
from needle.autograd import Tensor
from needle.backend_ndarray import NDArray

__all__ = ["save", "load"]

_FORMAT = "needle-1"
PathLike = Union[str, "os.PathLike[str]"]


def _flatten(obj: Any, key: str, tensors: Dict[str, np.ndarray]) -> Any:
    """The JSON skeleton of obj; its arrays go into `tensors` under dotted keys."""
    if isinstance(obj, (Tensor, NDArray, np.ndarray)):
        if not key:
            raise TypeError("needle.save: the object must be a dict (a state dict), "
                            f"got a bare {type(obj).__name__}")
        if key in tensors:
            raise ValueError(f"needle.save: two tensors would be stored under key '{key}'")
        if isinstance(obj, Tensor):
            tensors[key] = obj.numpy()
            return {"__tensor__": key, "kind": "Tensor", "requires_grad": obj.requires_grad}
        if isinstance(obj, NDArray):
            tensors[key] = obj.numpy()
            return {"__tensor__": key, "kind": "NDArray"}
        tensors[key] = np.ascontiguousarray(obj)
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
    pass


def _rebuild(node: Any, tensors: Dict[str, np.ndarray], used: set) -> Any:
    if isinstance(node, dict):
        if "__tensor__" in node:
            key = node["__tensor__"]
            if key not in tensors:
                raise _BadFile(f"the metadata names tensor '{key}', which the file lacks")
            used.add(key)
            arr = tensors[key]
            kind = node.get("kind")
            if kind == "numpy":
                return arr
            if arr.dtype not in (np.float32, np.float64):
                raise _BadFile(f"tensor '{key}' has dtype {arr.dtype}; a needle {kind} "
                               "holds float32 or float64")
            if kind == "NDArray":
                return NDArray(arr, dtype=str(arr.dtype))
            if kind == "Tensor":
                return Tensor(arr, dtype=str(arr.dtype),
                              requires_grad=bool(node.get("requires_grad", False)))
            raise _BadFile(f"unknown kind {kind!r} for tensor '{key}'")
        if "__dict__" in node:
            return {k: _rebuild(v, tensors, used) for k, v in node["__dict__"]}
        if "__list__" in node:
            return [_rebuild(v, tensors, used) for v in node["__list__"]]
        if "__tuple__" in node:
            return tuple(_rebuild(v, tensors, used) for v in node["__tuple__"])
        raise _BadFile(f"unexpected metadata entry {node!r}")
    if isinstance(node, list):
        raise _BadFile("unexpected list in the metadata")
    return node


def _reason(err: Exception) -> str:
    msg = str(err)
    hints = {
        "HeaderTooLarge": "the header length is larger than the file (truncated or not "
                          "a safetensors file)",
        "HeaderTooSmall": "the file is too short for a safetensors header",
        "InvalidHeaderLength": "the header length does not fit the file (truncated or "
                               "not a safetensors file)",
        "InvalidHeaderDeserialization": "the header is not valid safetensors JSON (a wrong "
                                        "dtype string, a bad field or not a safetensors file)",
        "InvalidHeaderStart": "the header does not start with '{' (not a safetensors file)",
        "InvalidHeader": "the header is not valid UTF-8 JSON",
        "MetadataIncompleteBuffer": "the data is shorter than the header says (truncated)",
        "InvalidOffset": "a tensor's byte range is out of order or outside the data",
        "TensorInvalidInfo": "a tensor's shape and dtype do not match its byte range",
        "ValidationOverflow": "a tensor's shape overflows",
    }
    for name, hint in hints.items():
        if name in msg:
            return f"{hint} [{msg}]"
    return msg


def load(path: PathLike) -> Any:
    """Read a file written by save() back (bit-exact): Tensors, NDArrays and NumPy
    arrays as they were saved, with the same nesting and plain values.

    A file that is not valid safetensors raises ValueError naming the file and
    the problem; a missing file raises FileNotFoundError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"needle.load: no such file: '{path}'")
    try:
        tensors = load_file(path)
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        meta = header.get("__metadata__") or {}
        if meta.get("format") != _FORMAT or "needle" not in meta:
            return tensors  # a foreign safetensors file: its arrays by name
        skeleton = json.loads(meta["needle"])
        used: set = set()
        obj = _rebuild(skeleton, tensors, used)
        extra = sorted(set(tensors) - used)
        if extra:
            raise _BadFile(f"tensors {extra} are not named by the metadata")
        return obj
    except SafetensorError as err:
        raise ValueError(f"needle.load: '{path}' is not a valid safetensors file: "
                         f"{_reason(err)}") from None
    except (ValueError, TypeError, KeyError, RecursionError) as err:
        raise ValueError(f"needle.load: '{path}' has bad needle metadata: {err}") from None
