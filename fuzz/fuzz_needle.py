"""atheris harness for needle's C entry points (issue 13).

Each input picks one target by its first byte and draws the target's
arguments from the rest: shapes, strides, offsets, indices, axes, dtypes and
byte buffers, biased towards the edges (0, 1, -1, 2**31, 2**56, 2**62,
2**63 - 1, -2**63, ...). A target may raise any of the ordinary Python errors
a bad argument earns (``EXPECTED``); anything else (a crash, an ASan or UBSan
report, SystemError, a hang) is a finding. ``make fuzz FUZZ_SECONDS=N`` builds
the extension with ``-fsanitize=fuzzer-no-link,address,undefined`` (clang) into
``fuzz/_build`` and runs this file over ``fuzz/corpus``; ``fuzz/README.md`` has
the details, the findings and how each became a regression test.

Run one input by hand: ``python fuzz/fuzz_needle.py CRASH_FILE`` (with the
instrumented build on PYTHONPATH, see fuzz/run.sh).
"""
import io
import os
import pickle
import sys
import tempfile
import zipfile

import atheris
import numpy as np

with atheris.instrument_imports(include=["needle"]):
    import needle as ndl
    from needle.backend_ndarray import NDArray
    from needle.backend_ndarray import ndarray_backend_cpu as km
    from needle.data.datasets import cifar10_dataset, mnist_dataset, ptb_dataset

EXPECTED = (ValueError, TypeError, IndexError, MemoryError, OverflowError, AssertionError,
            KeyError, NotImplementedError, ZeroDivisionError, EOFError, OSError,
            pickle.UnpicklingError, zipfile.BadZipFile, UnicodeDecodeError)
EDGES = [0, 1, -1, 2, 3, 7, 8, 2**31 - 1, 2**31, 2**32, 2**32 + 1, 2**40, 2**55, 2**56,
         2**56 + 1, 2**57, 2**62, 2**62 + 1, 2**63 - 1, -2**63, -2**62, -2**31]
TMP = tempfile.mkdtemp(prefix="needle_fuzz_", dir="/dev/shm" if os.path.isdir("/dev/shm")
                       else None)
# NEEDLE_FUZZ_NO_STRIDED=1: views without as_strided (fuzz/README.md: the revert check).
NO_STRIDED = os.environ.get("NEEDLE_FUZZ_NO_STRIDED", "0") not in ("", "0")
# Bigger arrays than this are never computed (a legal 4 GB result is no finding).
MAX_WORK = 1 << 16


def edge_int(fdp) -> int:
    kind = fdp.ConsumeIntInRange(0, 4)
    if kind == 0:
        return fdp.ConsumeIntInRange(-3, 9)
    if kind == 1:
        return fdp.PickValueInList(EDGES)
    if kind == 2:
        return fdp.ConsumeIntInRange(-2**63, 2**63 - 1)
    if kind == 3:
        return (1 << fdp.ConsumeIntInRange(0, 63)) + fdp.ConsumeIntInRange(-2, 2)
    return fdp.ConsumeIntInRange(0, 40)


def small_shape(fdp, max_rank=4, max_dim=5):
    return tuple(fdp.ConsumeIntInRange(0, max_dim)
                 for _ in range(fdp.ConsumeIntInRange(0, max_rank)))


def wild_shape(fdp):
    rank = fdp.ConsumeIntInRange(0, 7) if fdp.ConsumeIntInRange(0, 15) else 17
    return tuple(edge_int(fdp) for _ in range(rank))


def size_of(shape) -> int:
    n = 1
    for d in shape:
        n *= max(int(d), 0)
    return n


def dtype(fdp):
    return fdp.PickValueInList(["float32", "float64", "float32", "bool", "int8", None])


def small_array(fdp, shape=None):
    shape = small_shape(fdp) if shape is None else shape
    dt = fdp.PickValueInList(["float32", "float64"])
    data = np.arange(size_of(shape), dtype=dt).reshape(shape) - 3
    return ndl.backend_ndarray.array(data, dtype=dt)


def wild_index(fdp, ndim):
    items = []
    for _ in range(fdp.ConsumeIntInRange(0, ndim + 1)):
        k = fdp.ConsumeIntInRange(0, 3)
        if k == 0:
            items.append(edge_int(fdp))
        else:
            parts = [None if fdp.ConsumeBool() else edge_int(fdp) for _ in range(3)]
            items.append(slice(*parts))
    return tuple(items) if fdp.ConsumeBool() or len(items) != 1 else items[0]


def random_view(fdp, a):
    """a through a few random views (slices with steps, permutes, broadcasts, strides)."""
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        k = fdp.ConsumeIntInRange(0, 5)
        if k == 0:
            a = a[wild_index(fdp, a.ndim)]
        elif k == 1:
            axes = list(range(a.ndim))
            for i in range(len(axes) - 1, 0, -1):
                j = fdp.ConsumeIntInRange(0, i)
                axes[i], axes[j] = axes[j], axes[i]
            a = a.permute(tuple(axes) if fdp.ConsumeIntInRange(0, 7) else wild_shape(fdp))
        elif k == 2:
            shape = tuple(fdp.ConsumeIntInRange(0, 3) for _ in range(fdp.ConsumeIntInRange(0, 2)))
            a = a.broadcast_to(shape + tuple(d if d != 1 or fdp.ConsumeBool() else 3
                                              for d in a.shape))
        elif k == 3 and not NO_STRIDED:
            a = a.as_strided(wild_shape(fdp) if fdp.ConsumeBool() else a.shape,
                             tuple(edge_int(fdp) for _ in range(a.ndim)))
        elif k == 4:
            a = a.reshape(wild_shape(fdp))
        else:
            a = a.compact() if size_of(a.shape) <= MAX_WORK else a
    return a


def use(fdp, a):
    """Compute with a if it is small enough to compute with."""
    if size_of(a.shape) > MAX_WORK:
        return
    k = fdp.ConsumeIntInRange(0, 9)
    if k == 0:
        a.numpy()
    elif k == 1:
        axis = None if fdp.ConsumeBool() else edge_int(fdp)
        a.sum(axis=axis, keepdims=fdp.ConsumeBool())
    elif k == 2:
        axis = None if fdp.ConsumeBool() else edge_int(fdp)
        a.max(axis=axis, keepdims=fdp.ConsumeBool())
    elif k == 3:
        a[wild_index(fdp, a.ndim)] = fdp.ConsumeFloat()
    elif k == 4:
        a[wild_index(fdp, a.ndim)] = a[wild_index(fdp, a.ndim)]
    elif k == 5:
        b = small_array(fdp, a.shape[-2:][::-1] if a.ndim >= 2 else small_shape(fdp, 2))
        a @ b
    elif k == 6:
        (a + random_view(fdp, small_array(fdp))).numpy()
    elif k == 7:
        np.asarray(a).sum()
    elif k == 8:
        a.flip(tuple(edge_int(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3))))
    else:
        memoryview(a).tobytes()


def target_make(fdp):
    size = fdp.ConsumeIntInRange(0, 64)
    handle = km.Array(size, fdp.PickValueInList(["float32", "float64"]))
    shape = wild_shape(fdp)
    strides = None if fdp.ConsumeBool() else tuple(edge_int(fdp) for _ in shape)
    a = NDArray.make(shape, strides=strides, handle=handle, offset=edge_int(fdp))
    a = random_view(fdp, a)
    use(fdp, a)


def target_views(fdp):
    a = random_view(fdp, small_array(fdp))
    use(fdp, a)
    use(fdp, random_view(fdp, a))


def target_constructors(fdp):
    k = fdp.ConsumeIntInRange(0, 3)
    shape = wild_shape(fdp)
    if size_of(shape) > MAX_WORK and fdp.ConsumeIntInRange(0, 3):
        return
    if k == 0:
        ndl.backend_ndarray.empty(shape, dtype=dtype(fdp))
    elif k == 1:
        ndl.backend_ndarray.full(shape, fdp.ConsumeFloat(), dtype=dtype(fdp))
    elif k == 2:
        NDArray.compact_strides(shape)
    else:
        raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
        arr = np.frombuffer(raw[: len(raw) // 8 * 8], dtype=np.float64)
        n = arr.size
        ndl.backend_ndarray.array(arr.reshape(small_shape(fdp)) if n == 0 else arr,
                                  dtype=dtype(fdp))


def target_kernel_module(fdp):
    dt = fdp.PickValueInList(["float32", "float64"])
    h = [km.Array(fdp.ConsumeIntInRange(0, 64), dt) for _ in range(3)]
    k = fdp.ConsumeIntInRange(0, 7)
    shape = wild_shape(fdp)
    strides = tuple(edge_int(fdp) for _ in shape)
    if k == 0:
        km.compact(h[0], h[1], shape, strides, edge_int(fdp))
    elif k == 1:
        km.ewise_setitem(h[0], h[1], shape, strides, edge_int(fdp))
    elif k == 2:
        km.scalar_setitem(edge_int(fdp), 1.0, h[1], shape, strides, edge_int(fdp))
    elif k == 3:
        km.to_numpy(h[0], shape, strides, edge_int(fdp))
    elif k == 4:
        km.matmul(h[0], h[1], h[2], edge_int(fdp), edge_int(fdp), edge_int(fdp))
    elif k == 5:
        km.matmul_tiled(h[0], h[1], h[2], edge_int(fdp), edge_int(fdp), edge_int(fdp))
    elif k == 6:
        fdp.PickValueInList([km.reduce_sum, km.reduce_max])(h[0], h[1], edge_int(fdp))
    else:
        fdp.PickValueInList([km.ewise_add, km.ewise_maximum])(h[0], h[1], h[2])


def tensor(fdp, shape=None):
    return ndl.Tensor(small_array(fdp, shape), requires_grad=fdp.ConsumeBool())


def target_tensor_ops(fdp):
    x = tensor(fdp)
    k = fdp.ConsumeIntInRange(0, 9)
    if k == 0:
        y = ndl.ops.reshape(x, wild_shape(fdp))
    elif k == 1:
        y = ndl.ops.broadcast_to(x, wild_shape(fdp))
    elif k == 2:
        y = ndl.ops.summation(x, tuple(edge_int(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3))))
    elif k == 3:
        y = ndl.ops.transpose(x, (edge_int(fdp), edge_int(fdp)) if fdp.ConsumeBool() else None)
    elif k == 4:
        y = ndl.ops.dilate(x, tuple(edge_int(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3))),
                           edge_int(fdp))
    elif k == 5:
        y = ndl.ops.flip(x, tuple(edge_int(fdp) for _ in range(fdp.ConsumeIntInRange(0, 3))))
    elif k == 6:
        n, h, w, c = (fdp.ConsumeIntInRange(0, 3) for _ in range(4))
        kk, co = fdp.ConsumeIntInRange(0, 4), fdp.ConsumeIntInRange(0, 3)
        x = tensor(fdp, (n, h, w, c))
        wt = tensor(fdp, (kk, kk, c if fdp.ConsumeIntInRange(0, 7) else c + 1, co))
        stride, padding = edge_int(fdp), edge_int(fdp)
        if 0 < stride and 0 <= padding and (h + 2 * padding - kk) // stride > 64:
            return  # a big legal output (a timeout under ASan, not a hang)
        y = ndl.ops.conv(x, wt, stride=stride, padding=padding)
        if (y.shape[1] - 1) * stride > 512:  # the gradient's dilated g: big legal work
            return
    elif k == 7:
        y = ndl.ops.matmul(x, tensor(fdp))
    elif k == 8:
        parts = ndl.ops.split(x, edge_int(fdp))
        y = ndl.ops.stack(list(parts), edge_int(fdp))
    else:
        y = ndl.ops.logsumexp(x, tuple(edge_int(fdp) for _ in range(fdp.ConsumeIntInRange(0, 2))))
    if size_of(y.shape) <= MAX_WORK and y.requires_grad:
        y.sum().backward()


def write_tmp(name: str, data: bytes) -> str:
    path = os.path.join(TMP, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def target_parsers(fdp):
    k = fdp.ConsumeIntInRange(0, 3)
    raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    if k == 0:
        head = fdp.PickValueInList([b"", b"\x00\x00\x08\x03", b"\x00\x00\x08\x01", b"\x1f\x8b"])
        lab = write_tmp("labels", b"\x00\x00\x08\x01" + raw[:12])
        mnist_dataset.parse_mnist(write_tmp("images", head + raw), lab)
    elif k == 1:
        if fdp.ConsumeBool():
            n = fdp.ConsumeIntInRange(0, 3)
            data = np.frombuffer(raw[: n * 3072].ljust(n * 3072, b"\0"), np.uint8)
            batch = {b"data": data.reshape(n, 3072) if fdp.ConsumeBool() else data,
                     b"labels": list(raw[:n + fdp.ConsumeIntInRange(-1, 1)])}
            raw = pickle.dumps(batch)
        cifar10_dataset._load_batch(write_tmp("data_batch_1", raw))
    elif k == 2:
        corpus = ptb_dataset.Corpus.__new__(ptb_dataset.Corpus)
        corpus.dictionary = ptb_dataset.Dictionary()
        ids = corpus.tokenize(write_tmp("train.txt", raw), max_lines=edge_int(fdp) % 100)
        batches = ptb_dataset.batchify(np.array(ids), fdp.ConsumeIntInRange(-1, 5))
        ptb_dataset.get_batch(batches, edge_int(fdp) % 50, fdp.ConsumeIntInRange(-1, 5))
    else:
        buf = io.BytesIO()
        arrays = {f"param_{i}": np.frombuffer(raw[: 8 * size_of(s)].ljust(8 * size_of(s), b"\0"),
                                              np.float64).reshape(s)
                  for i, s in enumerate(small_shape(fdp, 3, 3) for _ in range(3))}
        np.savez(buf, **arrays)
        data = buf.getvalue() if fdp.ConsumeBool() else raw
        with np.load(write_tmp("ckpt.npz", data)) as ckpt:
            params = [ndl.Tensor(ckpt[name]) for name in ckpt.files]
        if len(params) >= 2:
            (params[0] @ params[1]).numpy()


TARGETS = [target_make, target_views, target_constructors, target_kernel_module,
           target_tensor_ops, target_parsers]
# NEEDLE_FUZZ_TARGETS=make,views runs only those (fuzz/README.md: the revert check).
if os.environ.get("NEEDLE_FUZZ_TARGETS"):
    TARGETS = [globals()["target_" + t] for t in os.environ["NEEDLE_FUZZ_TARGETS"].split(",")]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)]
    try:
        target(fdp)
    except EXPECTED:
        pass
    except RuntimeError as e:  # device mismatches are errors; a failed kernel is a finding
        if "kernel failed" in str(e) or "internal" in str(e):
            raise


def main() -> None:
    np.seterr(all="ignore")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
