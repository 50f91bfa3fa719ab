"""Limits are errors, not crashes (issue 13, item 6).

Shapes whose element count overflows int64 (zero dimensions included) or is
beyond memory, ranks above the maximum, strides and offsets near 2**63 for
make / as_strided / the kernel module, huge slice steps: each raises a Python
error naming the values, checked against NumPy's own rule where it has one.
nn modules name the expected and actual shapes; a long chain of ops runs
backward and frees without recursion. Regression tests for what fuzz/ found
are at the bottom (fuzz/README.md lists them).
"""
import math
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

import needle as ndl
import needle.backend_ndarray as nd
from needle import nn
from needle.backend_ndarray import NDArray
from needle.backend_ndarray import ndarray_backend_cpu as km

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIG = [2**32, 2**40, 2**62, 2**63 - 1]
MAX_DIMS = 16


def numpy_refuses(shape) -> bool:
    """NumPy's rule for the same shape (its limit, 2**63 bytes, is above ours, 2**56
    elements, so every shape it refuses we refuse too)."""
    try:
        np.empty((0,)).reshape(shape)
    except ValueError:
        return True
    return False


# --------------------------------------------------------------------------
# shapes whose size overflows
# --------------------------------------------------------------------------

OVERFLOWING = [(2**32, 2**32), (2**32, 2**32, 0), (0, 2**40, 2**40), (2**62, 4, 0),
               (0, 2**63 - 1, 2), (-1, 2**40, 2**40), (3, 0, 2**62, 2**62)]


@pytest.mark.parametrize("shape", OVERFLOWING, ids=str)
def test_reshape_of_empty_array_to_overflowing_shape_raises(shape):
    assert numpy_refuses(shape)
    a = nd.array(np.zeros((0,), np.float32))
    with pytest.raises(ValueError, match="too many elements"):
        a.reshape(shape)
    with pytest.raises(ValueError, match="too many elements"):
        ndl.ops.reshape(ndl.Tensor(a), shape)


@pytest.mark.parametrize("shape", [s for s in OVERFLOWING if -1 not in s], ids=str)
@pytest.mark.parametrize("make", ["empty", "full", "make", "compact_strides", "broadcast_to"])
def test_constructors_refuse_overflowing_shapes(shape, make):
    with pytest.raises(ValueError, match="too many elements") as e:
        if make == "empty":
            nd.empty(shape)
        elif make == "full":
            nd.full(shape, 1.0)
        elif make == "make":
            NDArray.make(shape, handle=km.Array(4))
        elif make == "compact_strides":
            NDArray.compact_strides(shape)
        else:
            nd.array(np.zeros((1,) * len(shape), np.float32)).broadcast_to(shape)
    assert str(shape[1]) in str(e.value)


def test_empty_array_indexing_after_refused_reshape_is_safe():
    """The crash of issue 13: the reshape used to be accepted, and indexing then
    read and wrote outside the buffer."""
    a = nd.array(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError):
        a = a.reshape((2**32, 2**32))
    assert a.shape == (0, 4) and a.numpy().shape == (0, 4)


def test_empty_shapes_within_the_limit_are_fine():
    a = nd.array(np.zeros((0,), np.float32))
    for shape in [(0, 2**28, 2**28), (2**56, 0), (0,) * MAX_DIMS]:
        assert not numpy_refuses(shape)
        assert a.reshape(shape).shape == shape
        assert nd.empty(shape).shape == shape
        assert a.reshape(shape).numpy().shape == shape
        assert a.reshape(shape).sum().numpy() == 0.0


@pytest.mark.parametrize("n", [2**40, 2**50, 2**56])
def test_beyond_memory_is_memory_error(n):
    with pytest.raises(MemoryError):
        nd.empty((n,))
    with pytest.raises(MemoryError):
        km.Array(n)


@pytest.mark.parametrize("n", [2**56 + 1, 2**62, 2**63 - 1])
def test_storage_size_limit(n):
    with pytest.raises(MemoryError, match=str(n)):
        km.Array(n)


# --------------------------------------------------------------------------
# rank
# --------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["empty", "numpy", "reshape", "make", "broadcast_to",
                                 "tensor_reshape"])
def test_rank_above_maximum_is_a_clear_error(how):
    shape = (1,) * (MAX_DIMS + 1)
    with pytest.raises(ValueError, match=str(MAX_DIMS)):
        if how == "empty":
            nd.empty(shape)
        elif how == "numpy":
            nd.array(np.zeros(shape, np.float32))
        elif how == "reshape":
            nd.array(np.zeros(1, np.float32)).reshape(shape)
        elif how == "make":
            NDArray.make(shape, handle=km.Array(1))
        elif how == "broadcast_to":
            nd.array(np.zeros(1, np.float32)).broadcast_to(shape)
        else:
            ndl.Tensor(np.zeros(1)).reshape(shape)


def test_rank_at_maximum_works():
    x = np.arange(2.0**MAX_DIMS, dtype=np.float32).reshape((2,) * MAX_DIMS)
    a = nd.array(x)
    np.testing.assert_array_equal(a.sum(axis=MAX_DIMS - 1).numpy(), x.sum(axis=-1))
    np.testing.assert_array_equal(a.permute(tuple(range(MAX_DIMS))[::-1]).numpy(), x.T)


# --------------------------------------------------------------------------
# strides and offsets near 2**63
# --------------------------------------------------------------------------

LAYOUTS = [((3,), (2**62,), 0), ((3,), (2**63 - 1,), 0), ((3,), (1,), 2**63 - 1),
           ((3,), (1,), 2**63 - 2), ((2, 2), (2**62, 2**62), 0), ((3,), (-2**62,), 2),
           ((3,), (-(2**63) + 1,), 2), ((2,), (2**63 - 1,), -(2**63) + 1),
           ((5, 3), (2**61, 2**62), -(2**63)), ((2,), (-1,), -(2**63))]


@pytest.mark.parametrize("shape, strides, offset", LAYOUTS, ids=str)
def test_make_bounds_check_does_not_overflow(shape, strides, offset):
    with pytest.raises(ValueError, match="outside the buffer of 8 elements"):
        NDArray.make(shape, strides=strides, handle=km.Array(8), offset=offset)


@pytest.mark.parametrize("shape, strides", [((3,), (2**62,)), ((3,), (2**63 - 1,)),
                                             ((2, 2), (2**62, 2**62)), ((3,), (-2**62,)),
                                             ((5, 3), (2**61, 2**62)), ((2,), (-(2**63) + 1,)),
                                             ((2**40, 2**15), (2**23, 1))], ids=str)
@pytest.mark.parametrize("start", [0, 7])
def test_as_strided_bounds_check_does_not_overflow(shape, strides, start):
    base = NDArray.make((8,), handle=km.Array(8), offset=0)[start:]
    with pytest.raises(ValueError, match="outside the buffer"):
        base.as_strided(shape, strides)


@pytest.mark.parametrize("shape, strides, offset", LAYOUTS, ids=str)
@pytest.mark.parametrize("fn", ["compact", "ewise_setitem", "scalar_setitem", "to_numpy"])
def test_kernel_module_bounds_check_does_not_overflow(shape, strides, offset, fn):
    a, out = km.Array(8), km.Array(8)
    with pytest.raises(ValueError, match="outside the buffer"):
        if fn == "compact":
            km.compact(a, out, shape, strides, offset)
        elif fn == "ewise_setitem":
            km.ewise_setitem(a, out, shape, strides, offset)
        elif fn == "scalar_setitem":
            km.scalar_setitem(math.prod(shape), 1.0, out, shape, strides, offset)
        else:
            km.to_numpy(a, shape, strides, offset)


@pytest.mark.parametrize("mnp", [(2**32, 2**32, 0), (0, 2**32, 2**32), (2**62, 4, 1),
                                 (1, 2**62, 4), (2**63 - 1, 2, 2)], ids=str)
@pytest.mark.parametrize("fn", ["matmul", "matmul_tiled"])
def test_kernel_module_matmul_sizes_do_not_overflow(mnp, fn):
    with pytest.raises(ValueError, match="int64 range|elements"):
        getattr(km, fn)(km.Array(16), km.Array(16), km.Array(16), *mnp)


@pytest.mark.parametrize("rs", [2**62, 2**63 - 1])
def test_kernel_module_reduce_size_does_not_overflow(rs):
    with pytest.raises(ValueError, match="int64 range|elements"):
        km.reduce_sum(km.Array(16), km.Array(4), rs)


def test_empty_view_with_made_up_strides_indexes_safely():
    """An empty view may carry any strides (NumPy's as_strided allows it); views of
    it either work or raise, never wrap around."""
    a = NDArray.make((0, 5), strides=(2**62, 2**62), handle=km.Array(4), offset=2**63 - 1)
    assert a.numpy().shape == (0, 5)
    with pytest.raises(ValueError, match="int64 range"):
        a[0:0, 3:4]
    assert np.asarray(a).shape == (0, 5)


@pytest.mark.parametrize("step", [2**62, 2**63 - 1])
def test_huge_slice_step_keeps_a_valid_stride(step):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = nd.array(x).permute((1, 0))  # strides (1, 4)
    v = a[::step, ::step]
    np.testing.assert_array_equal(v.numpy(), x.T[::step, ::step])
    v[:, :] = 7.0
    assert v.numpy().item() == 7.0


# --------------------------------------------------------------------------
# nn modules name the expected and actual shapes
# --------------------------------------------------------------------------

def T(*shape):
    return ndl.Tensor(np.random.randn(*shape).astype(np.float32))


NN_BAD = [
    ("BatchNorm1d", lambda: nn.BatchNorm1d(3)(T(2, 3, 4)), "(N, dim)", (2, 3, 4)),
    ("BatchNorm1d", lambda: nn.BatchNorm1d(3)(T(3)), "(N, dim)", (3,)),
    ("BatchNorm1d", lambda: nn.BatchNorm1d(3)(T(2, 4)), "3 features", (2, 4)),
    ("BatchNorm1d", lambda: nn.BatchNorm1d(3).eval()(T(2, 4)), "3 features", (2, 4)),
    ("BatchNorm2d", lambda: nn.BatchNorm2d(3)(T(2, 3, 4)), "(N, C, H, W)", (2, 3, 4)),
    ("BatchNorm2d", lambda: nn.BatchNorm2d(3)(T(2, 4, 5, 5)), "3 features", (2, 4, 5, 5)),
    ("LayerNorm1d", lambda: nn.LayerNorm1d(3)(T(2, 4)), "3 features", (2, 4)),
    ("LayerNorm1d", lambda: nn.LayerNorm1d(3)(ndl.Tensor(np.float32(1.0))), "(..., dim)", ()),
    ("Flatten", lambda: nn.Flatten()(ndl.Tensor(np.float32(1.0))), "(N, ...)", ()),
    ("SoftmaxLoss", lambda: nn.SoftmaxLoss()(T(5), ndl.Tensor([1, 2])), "(batch, classes)",
     (5,)),
    ("SoftmaxLoss", lambda: nn.SoftmaxLoss()(T(2, 3, 4), ndl.Tensor([1, 2])),
     "(batch, classes)", (2, 3, 4)),
    ("SoftmaxLoss", lambda: nn.SoftmaxLoss()(T(2, 3), ndl.Tensor([[1, 2]])), "(batch,)",
     (1, 2)),
    ("SoftmaxLoss", lambda: nn.SoftmaxLoss()(T(2, 3), ndl.Tensor([1, 2, 0])), "(batch,)",
     (3,)),
    ("Linear", lambda: nn.Linear(4, 2)(T(3, 5)), "4 features", (3, 5)),
    ("Linear", lambda: nn.Linear(4, 2)(ndl.Tensor(np.float32(1.0))), "(..., in_features)", ()),
]


@pytest.mark.parametrize("module, call, expected, actual", NN_BAD,
                         ids=[f"{m}-{i}" for i, (m, *_) in enumerate(NN_BAD)])
def test_nn_module_names_expected_and_actual_shape(module, call, expected, actual):
    with pytest.raises(ValueError) as e:
        call()
    msg = str(e.value)
    assert module in msg and expected in msg and f"got shape {actual}" in msg, msg


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf"), -float("inf"), "0.5",
                               None, True, 1 + 0j])
def test_dropout_p_outside_the_unit_interval_is_refused(p):
    with pytest.raises(ValueError, match="Dropout: p must be a probability"):
        nn.Dropout(p)


@pytest.mark.parametrize("p", [0, 0.0, 0.25, 1, 1.0, np.float32(0.5), np.float64(0.75)])
def test_dropout_accepts_pytorch_range(p):
    import torch
    torch.nn.Dropout(float(p))  # the same range as PyTorch's
    assert nn.Dropout(p).p == p


def test_dropout_p_one_zeroes_like_torch():
    import torch
    x = np.random.randn(3, 4).astype(np.float32)
    got = nn.Dropout(1.0)(ndl.Tensor(x)).numpy()
    np.testing.assert_array_equal(got, torch.nn.Dropout(1.0)(torch.tensor(x)).numpy())


# --------------------------------------------------------------------------
# a long chain runs backward and frees without recursion
# --------------------------------------------------------------------------

CHAIN = r'''
import gc, sys
import numpy as np
import needle as ndl
n = int(sys.argv[1])
x = ndl.Tensor(np.ones(2, np.float32), requires_grad=True)
base = ndl.autograd.TENSOR_COUNTER
y = x
for _ in range(n):
    y = y * 1.0
y.sum().backward()
assert np.array_equal(x.grad.numpy(), [1.0, 1.0]), x.grad
del y
gc.collect()
x.grad = None
assert ndl.autograd.TENSOR_COUNTER <= base, (ndl.autograd.TENSOR_COUNTER, base)
print("OK")
'''

# A recursion of n frames needs far more than this much stack.
SMALL_STACK = 1 << 20


def run_chain(n: int, tmp_path) -> None:
    script = tmp_path / "chain.py"
    script.write_text(CHAIN)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NEEDLE_BACKEND", None)

    def small_stack():
        resource.setrlimit(resource.RLIMIT_STACK, (SMALL_STACK, SMALL_STACK))

    r = subprocess.run([sys.executable, str(script), str(n)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800, preexec_fn=small_stack)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), \
        f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-3000:]}"


def test_long_chain_backward_and_free_on_a_1_mib_stack(tmp_path):
    run_chain(200_000, tmp_path)


@pytest.mark.skipif(os.environ.get("NEEDLE_SLOW", "0") in ("", "0"),
                    reason="a minute and 2 GB: NEEDLE_SLOW=1 (make proptest) runs it")
def test_million_op_chain_backward_and_free(tmp_path):
    run_chain(1_000_000, tmp_path)


# --------------------------------------------------------------------------
# what fuzz/ found (fuzz/README.md)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("stride, padding, hw, k", [(40, 16, 3, 1), (2**40, 16, 3, 1),
                                                    (9, 2, 5, 2), (6, 4, 2, 3),
                                                    (2**62, 8, 2, 1), (2**62 + 1, 4, 3, 1)],
                         ids=str)
def test_conv_gradient_with_stride_past_the_padded_input(stride, padding, hw, k):
    """fuzz finding 1: a stride above Hp - K left the input gradient's conv a crop
    longer than its input (pad: kernel failed); gradients against PyTorch."""
    import torch
    xn, wn = np.random.randn(2, hw, hw, 3), np.random.randn(k, k, 3, 2)
    x, w = ndl.Tensor(xn, dtype="float64"), ndl.Tensor(wn, dtype="float64")
    y = ndl.ops.conv(x, w, stride=stride, padding=padding)
    y.sum().backward()
    xt = torch.tensor(xn.transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(wn.transpose(3, 2, 0, 1), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, stride=min(stride, 2**31 - 1), padding=padding)
    yt.sum().backward()
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy().transpose(0, 2, 3, 1), atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), wt.grad.numpy().transpose(2, 3, 1, 0), atol=1e-12)


@pytest.mark.parametrize("n, c_out", [(3, 0), (0, 2), (0, 0)])
def test_conv_with_empty_output_and_huge_padding(n, c_out):
    """fuzz finding 2: an empty batch or C_out let a padding of 2**40 through, and
    the output's row count overflowed; the output shape is now checked."""
    x = ndl.Tensor(np.zeros((n, 3, 3, 3), np.float32))
    w = ndl.Tensor(np.zeros((4, 4, 3, c_out), np.float32))
    with pytest.raises(ValueError, match="conv: output shape .* too many elements"):
        ndl.ops.conv(x, w, stride=4, padding=2**40)
    # within the limit, an empty conv is fine, as in PyTorch
    side = (3 + 2 * 2**20 - 4) // 4 + 1
    assert ndl.ops.conv(x, w, stride=4, padding=2**20).shape == (n, side, side, c_out)


@pytest.mark.parametrize("shape, d", [((0, 5), 2**62), ((0, 0, 2), 2**62), ((1, 2), 2**20)],
                         ids=str)
def test_dilate_with_huge_dilation_on_empty_or_unit_axes(shape, d):
    """fuzz finding 3: Dilate's output shape n*(d+1) and its view's strides
    overflowed for d near 2**63 (also inside conv's gradient with a huge stride)."""
    x = np.random.randn(*shape)
    y = ndl.ops.dilate(ndl.Tensor(x), (0,), d)
    want = (shape[0] * (d + 1),) + shape[1:]
    assert y.shape == want
    if x.size:
        np.testing.assert_array_equal(y.numpy()[0], x[0].astype(np.float32))


@pytest.mark.parametrize("shape, d", [((0, 5), 2**63 - 1), ((1, 3), 2**63 - 1),
                                      ((4, 2), 2**62), ((3,), 2**61)], ids=str)
def test_dilate_output_that_overflows_is_an_error(shape, d):
    with pytest.raises(ValueError, match="Dilate: .*(overflow int64|too many elements)"):
        ndl.ops.dilate(ndl.Tensor(np.ones(shape)), (0,), d)


def test_batched_matmul_of_empty_view_with_made_up_strides():
    """fuzz finding 4: the batch offsets of an empty operand (any strides) overflowed."""
    a = NDArray.make((3, 0, 3), strides=(2**62, 2**62, 2**62), handle=km.Array(4))
    b = nd.array(np.ones((3, 3, 4), np.float32))
    assert (a @ b).numpy().shape == (3, 0, 4)
    c = NDArray.make((3, 2, 0), strides=(2**62, 1, 2**62), handle=km.Array(4))
    d = NDArray.make((3, 0, 2), strides=(2**62, 2**62, 1), handle=km.Array(4))
    np.testing.assert_array_equal((c @ d).numpy(), np.zeros((3, 2, 2), np.float32))
