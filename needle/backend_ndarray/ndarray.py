"""The NDArray module (API.md 2): the C types and NumPy-named helpers.

`NDArray`, `BackendDevice` and the device factories are C (needle._C); the
helpers below only forward to NDArray methods so that op code can call
`array_api.X(...)` as it would call NumPy.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

from needle import _C

NDArray = _C.NDArray
BackendDevice = _C.BackendDevice
SliceError = _C.SliceError
cpu = _C.cpu
cuda = _C.cuda
cpu_numpy = _C.cpu_numpy
default_device = _C.default_device
all_devices = _C.all_devices
set_num_threads = _C.set_num_threads
get_num_threads = _C.get_num_threads
matmul_kernel_name = _C.matmul_kernel_name

__all__ = [
    "NDArray", "BackendDevice", "SliceError", "cpu", "cuda", "cpu_numpy", "default_device",
    "all_devices", "array", "empty", "full", "broadcast_to", "reshape", "maximum", "log",
    "exp", "tanh", "sum", "max", "flip", "prod", "set_num_threads", "get_num_threads",
    "matmul_kernel_name",
]


def prod(x: Iterable[int]) -> int:
    """Product of a sequence of ints (1 for an empty one)."""
    return math.prod(x)


def array(a, dtype: Optional[str] = "float32", device: Optional[BackendDevice] = None) -> NDArray:
    """A new array holding a copy of `a` (NumPy array, list, scalar or NDArray)."""
    return NDArray(a, device=device, dtype=dtype)


def empty(shape: Sequence[int], dtype: Optional[str] = "float32",
          device: Optional[BackendDevice] = None) -> NDArray:
    """An uninitialised compact array."""
    return (device if device is not None else default_device()).empty(shape, dtype)


def full(shape: Sequence[int], fill_value: float, dtype: Optional[str] = "float32",
         device: Optional[BackendDevice] = None) -> NDArray:
    """A compact array with every element equal to `fill_value`."""
    return (device if device is not None else default_device()).full(shape, fill_value, dtype)


def broadcast_to(array: NDArray, new_shape: Sequence[int]) -> NDArray:
    return array.broadcast_to(new_shape)


def reshape(array: NDArray, new_shape: Sequence[int]) -> NDArray:
    return array.reshape(new_shape)


def maximum(a: NDArray, b) -> NDArray:
    return a.maximum(b)


def log(a: NDArray) -> NDArray:
    return a.log()


def exp(a: NDArray) -> NDArray:
    return a.exp()


def tanh(a: NDArray) -> NDArray:
    return a.tanh()


def sum(a: NDArray, axis=None, keepdims: bool = False) -> NDArray:  # noqa: A001
    return a.sum(axis=axis, keepdims=keepdims)


def max(a: NDArray, axis=None, keepdims: bool = False) -> NDArray:  # noqa: A001
    return a.max(axis=axis, keepdims=keepdims)


def flip(a: NDArray, axes) -> NDArray:
    return a.flip(axes)
