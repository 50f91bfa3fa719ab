"""The NumPy kernel module of the `cpu_numpy()` device (API.md 2.3).

Handles are the same host `Array` buffers the C kernels use, seen through
NumPy (`np.frombuffer`), so arrays of both host devices share one layout.
"""
import numpy as np

from needle._C import Array

__device_name__ = "numpy"
_datatype = np.float32
__tile_size__ = 1


def _np(a: Array) -> np.ndarray:
    return np.frombuffer(a, dtype=np.dtype(a.dtype))


def _view(a: Array, shape, strides, offset) -> np.ndarray:
    flat = _np(a)
    item = flat.itemsize
    return np.lib.stride_tricks.as_strided(
        flat[offset:], tuple(shape), tuple(s * item for s in strides))


def to_numpy(a, shape, strides, offset):
    return _view(a, shape, strides, offset).copy()


def from_numpy(a, out):
    src = np.ascontiguousarray(a).reshape(-1)
    _np(out)[: src.size] = src


def fill(out, val):
    _np(out)[:] = val


def compact(a, out, shape, strides, offset):
    _np(out)[:] = _view(a, shape, strides, offset).reshape(-1)


def ewise_setitem(a, out, shape, strides, offset):
    view = _view(out, shape, strides, offset)
    view[...] = _np(a)[: view.size].reshape(shape)


def scalar_setitem(size, val, out, shape, strides, offset):
    _view(out, shape, strides, offset)[...] = val


def _ewise(fn):
    def kernel(a, b, out):
        n = out.size
        _np(out)[:] = fn(_np(a)[:n], _np(b)[:n])
    return kernel


def _scalar(fn):
    def kernel(a, val, out):
        n = out.size
        x = _np(a)[:n]
        _np(out)[:] = fn(x, x.dtype.type(val))
    return kernel


def _unary(fn):
    def kernel(a, out):
        _np(out)[:] = fn(_np(a)[: out.size])
    return kernel


ewise_add = _ewise(np.add)
scalar_add = _scalar(np.add)
ewise_mul = _ewise(np.multiply)
scalar_mul = _scalar(np.multiply)
ewise_div = _ewise(np.divide)
scalar_div = _scalar(np.divide)
scalar_power = _scalar(np.power)
ewise_maximum = _ewise(np.maximum)
scalar_maximum = _scalar(np.maximum)
ewise_eq = _ewise(np.equal)
scalar_eq = _scalar(np.equal)
ewise_ge = _ewise(np.greater_equal)
scalar_ge = _scalar(np.greater_equal)
ewise_log = _unary(np.log)
ewise_exp = _unary(np.exp)
ewise_tanh = _unary(np.tanh)


def matmul(a, b, out, m, n, p):
    _np(out)[: m * p] = (_np(a)[: m * n].reshape(m, n) @ _np(b)[: n * p].reshape(n, p)).reshape(-1)


def reduce_max(a, out, reduce_size):
    _np(out)[:] = _np(a)[: out.size * reduce_size].reshape(-1, reduce_size).max(axis=1)


def reduce_sum(a, out, reduce_size):
    _np(out)[:] = _np(a)[: out.size * reduce_size].reshape(-1, reduce_size).sum(axis=1)
