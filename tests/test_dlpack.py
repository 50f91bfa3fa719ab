"""DLPack both ways (issue 12): NDArray/Tensor.__dlpack__, __dlpack_device__,
needle.from_dlpack, with NumPy and PyTorch on the CPU.

- Memory is shared both ways: a write through one side is read through the
  other, for float32 and float64, contiguous and strided views (transposed,
  stepped, reversed, broadcast), 0-d and empty arrays.
- Lifetimes: the producer's memory lives as long as the consumer (the
  producer object deleted first); the deleter runs exactly once (reference
  counts back to where they were, for consumed and unconsumed capsules,
  versioned and legacy), also when called from a thread without the GIL.
- The protocol's arguments: max_version picks the versioned or the legacy
  capsule; copy=True copies; stream and dl_device are checked.
- A read-only producer is copied; an unsupported dtype or device, a used
  capsule, an object without __dlpack__ each raise a clear error.
"""
import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

import needle as ndl
from needle.backend_ndarray import NDArray
from needle.interop import ndarray_from_dlpack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ["float32", "float64"]


def nd(x, dtype="float32"):
    return NDArray(np.asarray(x), dtype=dtype)


# ---- needle -> NumPy / torch ---------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_shares_needle_memory_both_ways(dtype):
    a = nd(np.arange(12).reshape(3, 4), dtype)
    n = np.from_dlpack(a)
    assert n.dtype == dtype and n.shape == (3, 4) and n.flags.writeable
    n[1, 2] = -7.0
    assert a.numpy()[1, 2] == -7.0
    a[0, 0] = 42.0
    assert n[0, 0] == 42.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_views_export_their_strides(dtype):
    base = nd(np.arange(24).reshape(4, 6), dtype)
    item = np.dtype(dtype).itemsize
    for view in (base.permute((1, 0)), base[1:4, ::2], base[:, 2:3].broadcast_to((4, 5)),
                 base.reshape((2, 3, 4)).permute((2, 0, 1))):
        n = np.from_dlpack(view)
        np.testing.assert_array_equal(n, view.numpy())
        assert n.strides == tuple(s * item for s in view.strides)
    t = base.permute((1, 0))
    np.from_dlpack(t)[0, 1] = 99.0  # writes land in the base's buffer
    assert base.numpy()[1, 0] == 99.0


def test_zero_d_and_empty():
    s = nd(np.array(3.5))
    assert np.from_dlpack(s).shape == () and float(np.from_dlpack(s)) == 3.5
    e = nd(np.zeros((0, 3)))
    assert np.from_dlpack(e).shape == (0, 3)
    assert ndarray_from_dlpack(np.zeros((2, 0), np.float32)).shape == (2, 0)
    assert ndl.from_dlpack(np.array(2.0)).shape == ()


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_shares_needle_memory_both_ways(dtype):
    a = nd(np.random.randn(5, 3), dtype)
    t = torch.from_dlpack(a)
    assert t.dtype == getattr(torch, dtype) and t.shape == (5, 3)
    t[2, 1] = 8.0
    assert a.numpy()[2, 1] == 8.0
    a[4, 0] = -1.0
    assert t[4, 0].item() == -1.0
    v = torch.from_dlpack(a.permute((1, 0)))
    assert v.stride() == (1, 3)
    np.testing.assert_array_equal(v.numpy(), a.numpy().T)


def test_tensor_exports_its_data():
    x = ndl.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert x.__dlpack_device__() == (1, 0)
    n = np.from_dlpack(x)
    n[0, 0] = 5.0
    assert x.numpy()[0, 0] == 5.0
    y = (x * 2).transpose()  # a computed tensor exports its realized data
    np.testing.assert_array_equal(torch.from_dlpack(y).numpy(), y.numpy())


# ---- NumPy / torch -> needle ---------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_needle_shares_numpy_memory_both_ways(dtype):
    x = np.random.randn(4, 5).astype(dtype)
    t = ndl.from_dlpack(x)
    assert isinstance(t, ndl.Tensor) and t.dtype == dtype and not t.requires_grad
    x[1, 1] = 123.0
    assert t.numpy()[1, 1] == 123.0
    a = ndarray_from_dlpack(x)
    a[3, 4] = -5.0
    assert x[3, 4] == -5.0
    assert (t + 1).numpy()[1, 1] == 124.0  # kernels run on foreign memory


def test_needle_reads_strided_numpy_views():
    x = np.arange(60, dtype=np.float64).reshape(6, 10)
    for v in (x.T, x[::2, 1::3], x[::-1, ::-2], x[2:5, 7]):
        a = ndarray_from_dlpack(v)
        np.testing.assert_array_equal(a.numpy(), v)
        assert a.shape == v.shape
    a = ndarray_from_dlpack(x[::-1, ::-2])  # negative strides, written through
    a[0, 0] = -1.0
    assert x[5, 9] == -1.0
    np.testing.assert_array_equal((a * 2).numpy(), x[::-1, ::-2] * 2)


def test_needle_shares_torch_memory_both_ways():
    t = torch.randn(3, 6)
    a = ndarray_from_dlpack(t)
    t[0, 0] = 11.0
    assert a.numpy()[0, 0] == 11.0
    a[2, 5] = 4.0
    assert t[2, 5].item() == 4.0
    for v in (t.t(), t[:, ::2], t[1:2].expand(4, 6), t.permute(1, 0)[1:]):
        np.testing.assert_array_equal(ndl.from_dlpack(v).numpy(), v.numpy())


def test_readonly_producer_is_copied():
    x = np.arange(4, dtype=np.float32)
    x.flags.writeable = False
    a = ndarray_from_dlpack(x)
    np.testing.assert_array_equal(a.numpy(), x)
    a[0] = 9.0
    assert x[0] == 0.0  # the read-only memory was not written
    b = ndarray_from_dlpack(np.broadcast_to(np.arange(3, dtype=np.float64), (4, 3)))
    np.testing.assert_array_equal(b.numpy(), np.tile(np.arange(3.0), (4, 1)))


# ---- lifetimes and the deleter -------------------------------------------------

def test_memory_outlives_the_producer():
    a = nd(np.arange(1000.0))
    n = np.from_dlpack(a)
    del a
    gc.collect()
    np.testing.assert_array_equal(n, np.arange(1000.0))
    t = torch.arange(500.0)
    b = ndl.from_dlpack(t)
    del t
    gc.collect()
    np.testing.assert_array_equal(b.numpy(), np.arange(500.0, dtype=np.float32))
    x = np.arange(8.0)
    c = ndarray_from_dlpack(x[::2])
    del x
    gc.collect()
    np.testing.assert_array_equal(c.numpy(), [0.0, 2.0, 4.0, 6.0])


def test_deleter_runs_exactly_once():
    a = nd(np.ones(16))
    h = a._handle
    base = sys.getrefcount(h)
    for kwargs in ({}, {"max_version": (1, 0)}):
        cap = a.__dlpack__(**kwargs)
        assert sys.getrefcount(h) == base + 1  # the capsule keeps the storage
        del cap  # never consumed: the capsule's destructor calls the deleter
        assert sys.getrefcount(h) == base
    n = np.from_dlpack(a)
    t = torch.from_dlpack(a)
    assert sys.getrefcount(h) == base + 2
    del n, t
    gc.collect()
    assert sys.getrefcount(h) == base
    # the import side: needle's storage calls the producer's deleter once
    x = np.ones(8)
    base = sys.getrefcount(x)
    y = ndl.from_dlpack(x)
    z = y.reshape((2, 4))  # views share the one storage
    assert sys.getrefcount(x) > base
    del y, z
    gc.collect()
    assert sys.getrefcount(x) == base


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32),
                ("device_id", ctypes.c_int32), ("ndim", ctypes.c_int32),
                ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16),
                ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # called with the GIL released


class Legacy(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", DELETER)]


class Versioned(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER),
                ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


CAPSULE_NAMES = {"dltensor": (b"dltensor", b"used_dltensor", Legacy),
                 "dltensor_versioned": (b"dltensor_versioned", b"used_dltensor_versioned",
                                        Versioned)}


def take(cap, name):
    """Consume cap as a C consumer does: the managed tensor, the capsule renamed."""
    api = ctypes.pythonapi
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
    full, used, struct = CAPSULE_NAMES[name]
    ptr = api.PyCapsule_GetPointer(cap, full)
    assert api.PyCapsule_SetName(cap, used) == 0  # `used` is a constant: it outlives cap
    return ptr, struct.from_address(ptr)


@pytest.mark.parametrize("max_version", [None, (1, 0)])
def test_deleter_is_safe_without_the_gil(max_version):
    a = nd(np.arange(6.0).reshape(2, 3))
    h = a._handle
    base = sys.getrefcount(h)
    cap = a.__dlpack__(max_version=max_version)
    name = "dltensor_versioned" if max_version else "dltensor"
    assert f'"{name}"' in repr(cap)
    ptr, managed = take(cap, name)
    t = managed.dl_tensor
    assert (t.device_type, t.device_id, t.ndim, t.code, t.bits, t.lanes) == (1, 0, 2, 2, 32, 1)
    assert [t.strides[i] for i in range(2)] == [3, 1] and t.byte_offset == 0
    if max_version:
        assert (managed.major, managed.minor, managed.flags) == (1, 0, 0)
    del a
    worker = threading.Thread(target=managed.deleter, args=(ptr,))
    worker.start()  # ctypes drops the GIL around the call: the deleter must take it
    worker.join()
    del cap  # renamed, so its destructor does nothing
    gc.collect()
    assert sys.getrefcount(h) == base - 1  # `a` gone, the export's reference gone


# ---- protocol arguments and errors ---------------------------------------------

def test_copy_true_exports_a_copy():
    a = nd(np.zeros(3))
    cap = a.__dlpack__(max_version=(1, 0), copy=True)
    ptr, managed = take(cap, "dltensor_versioned")
    assert managed.flags & 2  # IS_COPIED
    assert managed.dl_tensor.data != a._handle.ptr()
    managed.deleter(ptr)
    n = np.from_dlpack(a, copy=True)
    n[0] = 1.0
    assert a.numpy()[0] == 0.0


def test_protocol_argument_errors():
    a = nd(np.zeros(3))
    with pytest.raises(ValueError, match="stream=None"):
        a.__dlpack__(stream=1)
    with pytest.raises(BufferError, match=r"dl_device=\(2, 0\)"):
        a.__dlpack__(dl_device=(2, 0))
    assert a.__dlpack__(dl_device=(1, 0)) is not None
    with pytest.raises(TypeError, match="max_version"):
        a.__dlpack__(max_version=1)


@pytest.mark.parametrize("value,name", [
    (torch.arange(3), "int64"), (torch.zeros(2, dtype=torch.bool), "bool8"),
    (torch.zeros(2, dtype=torch.float16), "float16"), (np.zeros(2, np.complex64), "complex64"),
    (np.zeros(2, np.int32), "int32"), (torch.zeros(2, dtype=torch.bfloat16), "bfloat16")])
def test_unsupported_dtypes(value, name):
    with pytest.raises(TypeError, match=f"float32 and float64, got {name}"):
        ndl.from_dlpack(value)


class FakeDevice:
    """A conformant producer on a CUDA device: refuses to export to the CPU."""
    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if dl_device != (2, 0):
            raise BufferError(f"cannot export to {dl_device} with copy={copy}")
        raise AssertionError("needle must not take a CUDA capsule")


class OldFakeDevice(FakeDevice):
    """A producer from before DLPack 1.0's keywords, on a CUDA device."""
    def __dlpack__(self, stream=None):
        raise AssertionError("needle must not ask it for a capsule")


def test_unsupported_device_and_objects():
    with pytest.raises(BufferError, match=r"FakeDevice is on DLPack device \(2, 0\)"):
        ndl.from_dlpack(FakeDevice())
    with pytest.raises(BufferError, match=r"OldFakeDevice is on DLPack device \(2, 0\)"):
        ndl.from_dlpack(OldFakeDevice())
    with pytest.raises(TypeError, match="list does not implement __dlpack__"):
        ndl.from_dlpack([1.0, 2.0])
    cap = nd(np.ones(2)).__dlpack__()
    ndarray_from_dlpack(cap)
    with pytest.raises(ValueError, match="consumed only once"):
        ndarray_from_dlpack(cap)


class LegacyProducer:
    """A producer from before DLPack 1.0's keywords: legacy capsules only."""
    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__()

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def test_legacy_producers_and_consumers():
    a = nd(np.arange(4.0))
    b = ndarray_from_dlpack(LegacyProducer(a))  # needle falls back to the legacy call
    b[0] = 7.0
    assert a.numpy()[0] == 7.0
    n = np.from_dlpack(LegacyProducer(a))  # and NumPy reads needle's legacy capsule
    assert n[0] == 7.0


def test_np_mode():
    code = textwrap.dedent("""
        import numpy as np, needle as ndl
        x = np.arange(6.0).reshape(2, 3)
        t = ndl.from_dlpack(x)
        x[0, 0] = 5.0
        assert t.numpy()[0, 0] == 5.0
        n = np.from_dlpack(t)
        assert n[0, 0] == 5.0
        print("ok")
    """)
    env = dict(os.environ, NEEDLE_BACKEND="np")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def test_no_leaks():
    """Exports, imports and their error paths, many times: reference counts and
    memory stay flat (a leaked export or import keeps 400 kB alive each)."""
    a = nd(np.random.randn(100, 1000))
    x = np.random.randn(100, 1000).astype(np.float32)
    steps = [lambda: np.from_dlpack(a), lambda: np.from_dlpack(a.permute((1, 0))),
             lambda: a.__dlpack__(max_version=(1, 0)), lambda: ndl.from_dlpack(x),
             lambda: np.from_dlpack(ndl.from_dlpack(x)), lambda: torch.from_dlpack(a),
             lambda: ndl.from_dlpack(torch.from_numpy(x)), lambda: pytest.raises(
                 TypeError, ndl.from_dlpack, np.zeros(3, np.int64))]
    h = a._handle
    counts = (sys.getrefcount(h), sys.getrefcount(x))
    for step in steps:
        step()
    gc.collect()
    before = rss_mb()
    for _ in range(60):
        for step in steps:
            step()
    gc.collect()
    assert (sys.getrefcount(h), sys.getrefcount(x)) == counts
    assert rss_mb() - before < 20  # 60 x 7 leaked copies would be over 160 MB
