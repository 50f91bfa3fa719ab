"""Conv (API.md 4.6) and the shape ops its gradients are made of (4.5).

- forward and gradients vs torch.nn.functional.conv2d over a thinned grid of
  batch, H, W (odd, even, smaller than the kernel), K, stride, padding,
  channels and dtype, on plain and non-compact inputs;
- float64 finite differences for Conv, Dilate, UnDilate (lengths that are
  not multiples of d+1 too), Flip, Stack and Split;
- gradients of gradients vs torch.autograd.grad(create_graph=True);
- the array-level function (needle._C._conv), its blocked and dual paths,
  the backend fallbacks, dtype mixing, and the errors;
- np mode: this file and test_nn_conv.py run again in a child process with
  NEEDLE_BACKEND=np (tests marked nd-only skip there).

Layouts: NHWC activations (N, H, W, C_in), KKIO weights (K, K, C_in, C_out);
PyTorch gets them permuted to NCHW / OIHW.
"""
import itertools
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch

import needle as ndl

IS_NP = ndl.BACKEND == "np"
nd_only = pytest.mark.skipif(IS_NP, reason="nd mode only (NDArray internals)")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = {"float32": dict(rtol=2e-4, atol=2e-4), "float64": dict(rtol=1e-9, atol=1e-9)}
NP_DT = {"float32": np.float32, "float64": np.float64}


def torch_conv(a, b, stride, padding):
    """a (N, H, W, C), b (K, K, C, O) torch tensors -> (N, Ho, Wo, O)."""
    return torch.nn.functional.conv2d(a.permute(0, 3, 1, 2).contiguous(),
                                      b.permute(3, 2, 0, 1).contiguous(),
                                      stride=stride, padding=padding).permute(0, 2, 3, 1)


def fits(h, w, k, p):
    return h + 2 * p >= k and w + 2 * p >= k


def thinned(grid, keep, salt=""):
    """A deterministic ~1/keep sample of itertools.product(*grid)."""
    return [c for c in itertools.product(*grid)
            if zlib.crc32((salt + repr(c)).encode()) % keep == 0]


# --------------------------------------------------------------------------
# forward and first gradients vs PyTorch
# --------------------------------------------------------------------------

GRID = [
    [1, 2, 3],                        # N
    [1, 2, 3, 4, 5, 6, 7, 8, 11],     # H
    [1, 2, 3, 4, 5, 6, 7, 8, 10],     # W
    [1, 2, 3, 4, 5, 6, 7],            # K
    [1, 2, 3],                        # stride
    [0, 1, 2, 3],                     # padding
    [(1, 1), (2, 3), (3, 2), (4, 5)],  # (C_in, C_out)
    ["float32", "float64"],
    ["plain", "T"],                   # T: input and weight are non-compact views
]
CASES = thinned(GRID, 900 if not IS_NP else 4000)
FITTING = [c for c in CASES if fits(c[1], c[2], c[3], c[5])]
TOO_SMALL = [c for c in CASES if not fits(c[1], c[2], c[3], c[5])]
# just fitting: H + 2p == K (one output row), and a few classic shapes
EXACT = [(2, 3, 5, 5, 1, 1, (2, 3), "float64", "plain"),
         (1, 1, 1, 3, 2, 1, (1, 2), "float64", "plain"),
         (2, 7, 7, 7, 1, 0, (3, 2), "float32", "plain"),
         (3, 8, 8, 3, 1, 1, (4, 5), "float32", "T"),
         (2, 9, 6, 3, 2, 1, (3, 4), "float64", "T"),
         (2, 10, 10, 4, 3, 3, (2, 2), "float64", "plain"),  # padding > K-1
         (2, 6, 9, 1, 1, 0, (5, 3), "float64", "plain"),    # 1x1 fast path
         (2, 6, 9, 1, 1, 0, (5, 3), "float32", "T"),
         (2, 5, 4, 1, 2, 2, (3, 3), "float64", "plain")]


def test_grid_is_broad():
    assert len(FITTING) >= (200 if not IS_NP else 40) and len(TOO_SMALL) >= (5 if not IS_NP else 1)
    for axis in (0, 3, 4, 5, 7):
        assert len({c[axis] for c in FITTING}) == len(GRID[axis]), axis


def make_inputs(n, h, w, k, ci, co, dtype, layout, device=None):
    """Leaves and the NHWC / KKIO tensors built from them, in needle (dtype)
    and torch (always float64, on the same rounded values: the float64 path
    also avoids oneDNN, which gets some float32 1x1 strided weight gradients
    wrong in torch 2.x)."""
    a = np.random.randn(n, h, w, ci).astype(NP_DT[dtype])
    b = np.random.randn(k, k, ci, co).astype(NP_DT[dtype])
    if layout == "T":  # leaves (N, W, H, C) and (C_in, K, K, C_out), then permuted views
        la, lb = np.ascontiguousarray(a.transpose(0, 2, 1, 3)), \
            np.ascontiguousarray(b.transpose(2, 1, 0, 3))
        x_leaf = ndl.Tensor(la, dtype=dtype, device=device)
        w_leaf = ndl.Tensor(lb, dtype=dtype, device=device)
        x, wt = x_leaf.transpose((1, 2)), w_leaf.transpose((0, 2))
        tx_leaf = torch.tensor(la, dtype=torch.float64, requires_grad=True)
        tw_leaf = torch.tensor(lb, dtype=torch.float64, requires_grad=True)
        tx, tw = tx_leaf.transpose(1, 2), tw_leaf.transpose(0, 2)
    else:
        x_leaf = ndl.Tensor(a, dtype=dtype, device=device)
        w_leaf = ndl.Tensor(b, dtype=dtype, device=device)
        x, wt = x_leaf, w_leaf
        tx_leaf = torch.tensor(a, dtype=torch.float64, requires_grad=True)
        tw_leaf = torch.tensor(b, dtype=torch.float64, requires_grad=True)
        tx, tw = tx_leaf, tw_leaf
    return (x_leaf, w_leaf, x, wt), (tx_leaf, tw_leaf, tx, tw)


def check_against_torch(n, h, w, k, s, p, chans, dtype, layout, device=None):
    ci, co = chans
    (x_leaf, w_leaf, x, wt), (tx_leaf, tw_leaf, tx, tw) = make_inputs(n, h, w, k, ci, co, dtype,
                                                                      layout, device)
    ref = torch_conv(tx, tw, s, p)
    y = ndl.conv(x, wt, stride=s, padding=p)
    assert y.shape == tuple(ref.shape) and y.dtype == dtype and y.device == x_leaf.device
    np.testing.assert_allclose(y.numpy(), ref.detach().numpy(), **TOL[dtype])
    g = np.random.randn(*ref.shape).astype(NP_DT[dtype])
    ref.backward(torch.tensor(g, dtype=torch.float64))
    y.backward(ndl.Tensor(g, dtype=dtype, device=x_leaf.device))
    for mine, theirs in ((x_leaf, tx_leaf), (w_leaf, tw_leaf)):
        assert mine.grad.shape == mine.shape and mine.grad.dtype == dtype
        assert mine.grad.device == mine.device
        np.testing.assert_allclose(mine.grad.numpy(), theirs.grad.numpy(), **TOL[dtype])


@pytest.mark.parametrize("n, h, w, k, s, p, chans, dtype, layout", FITTING + EXACT)
def test_conv_vs_torch(n, h, w, k, s, p, chans, dtype, layout, device):
    check_against_torch(n, h, w, k, s, p, chans, dtype, layout, device)


@pytest.mark.parametrize("n, h, w, k, s, p, chans, dtype, layout", TOO_SMALL)
def test_kernel_larger_than_padded_input_raises(n, h, w, k, s, p, chans, dtype, layout, device):
    ci, co = chans
    x = ndl.Tensor(np.zeros((n, h, w, ci)), dtype=dtype, device=device)
    wt = ndl.Tensor(np.zeros((k, k, ci, co)), dtype=dtype, device=device)
    with pytest.raises(ValueError, match=r"does not fit in the padded input.*\(%d, %d, %d, %d\)"
                       % (n, h, w, ci)):
        ndl.conv(x, wt, s, p)


@nd_only
@pytest.mark.parametrize("n, h, w, k, s, p, chans, dtype, layout", FITTING[::4] + EXACT[:6])
def test_conv_vs_torch_on_backend_fallbacks(n, h, w, k, s, p, chans, dtype, layout):
    """With the optional slots (pad, im2col, ...) switched off: the composed
    im2col (copy slot) and pad give the same results."""
    prev = ndl._C._skip_optional_slots(True)
    try:
        check_against_torch(n, h, w, k, s, p, chans, dtype, layout)
    finally:
        ndl._C._skip_optional_slots(prev)


@pytest.mark.parametrize("n, h, w, k, s, p, ci, co", [
    (4, 17, 19, 3, 1, 1, 8, 16),   # many blocks of rows (forward, dA)
    (4, 12, 12, 3, 1, 1, 32, 4),   # dual form in several blocks (dB: 576 rows)
    (3, 13, 9, 5, 2, 2, 6, 7),     # strided, non-square input
    (2, 16, 16, 3, 3, 0, 16, 8),
])
def test_conv_vs_torch_larger(n, h, w, k, s, p, ci, co, device):
    check_against_torch(n, h, w, k, s, p, (ci, co), "float32", "plain", device)
    check_against_torch(n, h, w, k, s, p, (ci, co), "float64", "T", device)


@pytest.mark.parametrize("n, h, w, k, p, ci, co", [
    (2, 8, 12, 3, 1, 16, 32),    # Wo two tiles of 6 (AVX2), two column panels
    (3, 4, 13, 3, 1, 8, 20),     # a 1-pixel last tile, a 4-column last panel
    (2, 6, 30, 3, 0, 5, 7),      # no padding: the input read where it lies
    (2, 40, 16, 5, 2, 51, 3),    # kw*C = 255, just inside KC
    (2, 28, 20, 4, 1, 64, 9),    # kw*C = 256 = KC (AVX2), an even kernel
    (1, 21, 40, 3, 1, 90, 4),    # kw*C = 270 > KC: the im2col path beside it
])  # (N*Ho*Wo >= kh*kw*C everywhere: fewer rows take the dual form)
@pytest.mark.parametrize("layout", ["plain", "T"])
def test_conv_rows_in_place(n, h, w, k, p, ci, co, layout, device):
    """Note [Conv rows in place] (cpu_conv_rows.c): a stride-1 conv whose output rows
    hold two register tiles reads its padded input in place, kh kernel calls a
    tile; forward and both gradients (the input gradient is such a conv too)
    against torch, in both dtypes, on a compact and a permuted input."""
    for dtype in ("float32", "float64"):
        check_against_torch(n, h, w, k, 1, p, (ci, co), dtype, layout, device)


@pytest.mark.parametrize("n, h, w, k, s, p, ci, co", [
    (2, 6, 5, 3, 1, 1, 3, 4), (2, 4, 8, 1, 2, 0, 1, 1), (1, 5, 5, 5, 1, 0, 2, 3),
    (3, 7, 7, 1, 1, 0, 4, 2), (2, 9, 6, 3, 2, 2, 2, 2),
    (2, 8, 8, 3, 1, 1, 6, 8),      # more gradient channels than im2col gathers from a view
    (4, 12, 12, 3, 1, 1, 32, 8)])  # the weight gradient's dual form in several blocks
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_broadcast_operands(n, h, w, k, s, p, ci, co, dtype, device):
    """y.sum().backward() hands Conv a broadcast (stride-0) gradient, which the
    gradients' convs take as input and as weight; inputs may be broadcast too."""
    a = np.random.randn(1, h, w, ci).astype(dtype)
    b = np.random.randn(k, k, ci, co).astype(dtype)
    x_leaf = ndl.Tensor(a, dtype=dtype, device=device)
    w_leaf = ndl.Tensor(b, dtype=dtype, device=device)
    x = ndl.broadcast_to(x_leaf, (n, h, w, ci))
    y = ndl.conv(x, w_leaf, s, p)
    y.sum().backward()
    ta = torch.tensor(a, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    ref = torch_conv(ta.expand(n, h, w, ci), tb, s, p)
    ref.sum().backward()
    np.testing.assert_allclose(y.numpy(), ref.detach().numpy(), **TOL[dtype])
    np.testing.assert_allclose(x_leaf.grad.numpy(), ta.grad.numpy(), **TOL[dtype])
    np.testing.assert_allclose(w_leaf.grad.numpy(), tb.grad.numpy(), **TOL[dtype])


def test_function_default_padding_is_one_and_class_default_is_zero(device):
    x = ndl.Tensor(np.random.randn(2, 5, 5, 3), device=device)
    w = ndl.Tensor(np.random.randn(3, 3, 3, 4), device=device)
    assert ndl.conv(x, w).shape == (2, 5, 5, 4)
    assert ndl.ops.conv(x, w, 2).shape == (2, 3, 3, 4)
    assert ndl.conv(x, w).op.padding == 1 and ndl.conv(x, w).op.stride == 1
    assert ndl.conv(x, w, 2, 0).op.padding == 0 and ndl.conv(x, w, 2, 0).op.stride == 2
    assert ndl.ops.Conv()(x, w).shape == (2, 3, 3, 4)
    assert ndl.ops.Conv(stride=2, padding=1)(x, w).shape == (2, 3, 3, 4)
    assert ndl.ops.Conv(1, 2).padding == 2 and ndl.ops.Conv(3, 2).stride == 3
    ref = torch_conv(torch.tensor(x.numpy()), torch.tensor(w.numpy()), 1, 1)
    np.testing.assert_allclose(ndl.conv(x, w).numpy(), ref.numpy(), **TOL[str(x.dtype)])
    with pytest.raises(TypeError):
        ndl.conv(x)


# --------------------------------------------------------------------------
# bad arguments
# --------------------------------------------------------------------------

@pytest.mark.parametrize("xs, ws, s, p, match", [
    ((5, 5, 3), (3, 3, 3, 2), 1, 1, r"input must be 4-D.*\(5, 5, 3\)"),
    ((1, 5, 5, 3), (3, 3, 3), 1, 1, r"weight must be 4-D.*\(3, 3, 3\)"),
    ((1, 5, 5, 3), (3, 2, 3, 2), 1, 1, r"square, got 3 x 2.*\(3, 2, 3, 2\)"),
    ((1, 5, 5, 3), (3, 3, 4, 2), 1, 1, r"C_in = 3 channels but the weight expects 4"),
    ((1, 5, 5, 3), (3, 3, 3, 2), 0, 1, r"stride must be >= 1, got 0"),
    ((1, 5, 5, 3), (3, 3, 3, 2), -2, 1, r"stride must be >= 1, got -2"),
    ((1, 5, 5, 3), (3, 3, 3, 2), 1, -1, r"padding must be >= 0, got -1"),
    ((1, 2, 5, 3), (5, 5, 3, 2), 1, 1, r"5 x 5 kernel does not fit .* 4 x 7"),
])
def test_bad_arguments_raise_value_errors_naming_the_shapes(xs, ws, s, p, match, device):
    x, w = ndl.Tensor(np.zeros(xs), device=device), ndl.Tensor(np.zeros(ws), device=device)
    with pytest.raises(ValueError, match=match):
        ndl.conv(x, w, s, p)
    with pytest.raises(ValueError, match=match):
        ndl.ops.Conv(s, p)(x, w)


@nd_only
def test_array_level_conv_errors_and_devices():
    nd = ndl.backend_ndarray
    a, w = nd.array(np.zeros((1, 5, 5, 3))), nd.array(np.zeros((3, 3, 3, 2)))
    assert ndl._C._conv(a, w, 1, 1).shape == (1, 5, 5, 2)
    with pytest.raises(ValueError, match=r"padding must be >= 0"):
        ndl._C._conv(a, w, 1, -1)
    with pytest.raises(ValueError, match=r"weight must be 4-D"):
        ndl._C._conv(a, nd.array(np.zeros((3, 3, 3))), 1, 0)
    with pytest.raises(ValueError, match=r"padding .* is too large"):
        ndl._C._conv(a, w, 1, 2 ** 50)
    with pytest.raises(TypeError):
        ndl._C._conv(np.zeros((1, 5, 5, 3)), w)
    b = nd.array(np.zeros((3, 3, 3, 2)), device=ndl.cpu_numpy())
    with pytest.raises(RuntimeError, match="conv"):
        ndl._C._conv(a, b)


# --------------------------------------------------------------------------
# the array-level function: paths and dtypes
# --------------------------------------------------------------------------

def np_conv(a, b, s, lo, hi, d=1):
    """Reference: a (N, H, W, C), b (Kh, Kw, C, O), paddings of either sign,
    the kernel's taps d apart."""
    kh, kw = b.shape[:2]
    for ax, (l, r) in ((1, (lo[0], hi[0])), (2, (lo[1], hi[1]))):
        sl = [slice(None)] * 4
        sl[ax] = slice(max(-l, 0), a.shape[ax] - max(-r, 0))
        a = a[tuple(sl)]
        pad = [(0, 0)] * 4
        pad[ax] = (max(l, 0), max(r, 0))
        a = np.pad(a, pad)
    win = np.lib.stride_tricks.sliding_window_view(a, ((kh - 1) * d + 1, (kw - 1) * d + 1),
                                                   axis=(1, 2))[:, ::s, ::s, :, ::d, ::d]
    return np.einsum("nyxcij,ijco->nyxo", win, b)


@nd_only
@pytest.mark.parametrize("shape_a, shape_w, s, p", [
    ((2, 9, 9, 3), (9, 9, 3, 4), 1, 0),     # kernel = input: output 1x1 (dual form)
    ((1, 6, 6, 40), (5, 5, 40, 3), 1, 1),   # few output rows, long kernel (dual form)
    ((3, 30, 30, 4), (3, 3, 4, 5), 1, 1),   # many blocks (direct)
    ((2, 8, 8, 3), (1, 1, 3, 5), 1, 0),     # 1x1
    ((2, 8, 8, 3), (1, 1, 3, 5), 2, 1),     # 1x1 with stride and padding: im2col
    ((2, 8, 8, 0), (3, 3, 0, 5), 1, 1),     # no input channels: zeros
    ((0, 8, 8, 2), (3, 3, 2, 5), 1, 1),     # empty batch
    ((2, 8, 8, 2), (3, 3, 2, 0), 1, 1),     # no output channels
])
@pytest.mark.parametrize("skip_slots", [False, True])
def test_array_conv_paths(shape_a, shape_w, s, p, skip_slots):
    nd = ndl.backend_ndarray
    a = np.random.randn(*shape_a)
    w = np.random.randn(*shape_w)
    prev = ndl._C._skip_optional_slots(skip_slots)
    try:
        got = ndl._C._conv(nd.array(a, dtype="float64"), nd.array(w, dtype="float64"), s, p)
    finally:
        ndl._C._skip_optional_slots(prev)
    ref = np_conv(a, w, s, (p, p), (p, p))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)


@nd_only
@pytest.mark.parametrize("shape_a, shape_w, s, p, d", [
    ((2, 9, 9, 3), (3, 3, 3, 4), 1, 0, 2),     # direct, no padding
    ((2, 9, 8, 3), (3, 2, 3, 4), 1, 2, 3),     # direct, padded on the fly, kw != kh
    ((3, 20, 20, 4), (3, 3, 4, 5), 1, 1, 2),   # direct, many blocks of rows
    ((2, 11, 11, 3), (3, 3, 3, 2), 2, 1, 2),   # stride and dilation both
    ((1, 12, 12, 40), (4, 4, 40, 3), 1, 1, 3),  # few output rows, long kernel: dual form
    ((2, 13, 13, 2), (2, 2, 2, 30), 2, 0, 5),  # the taps at the window's far edges
    ((2, 5, 7, 3), (1, 3, 3, 2), 1, 0, 3),     # a one-tap axis: dilation only along W
    ((2, 6, 6, 3), (1, 1, 3, 2), 2, 1, 7),     # 1x1: any dilation is no dilation
])
@pytest.mark.parametrize("skip_slots", [False, True])
def test_array_conv_with_dilated_kernel(shape_a, shape_w, s, p, d, skip_slots):
    """The general conv of Conv's gradients with the kernel's taps d apart
    (Note [Dilated windows]): the CPU's im2col and the composed one, direct
    and dual form, against NumPy and against torch's dilation."""
    nd = ndl.backend_ndarray
    a, w = np.random.randn(*shape_a), np.random.randn(*shape_w)
    prev = ndl._C._skip_optional_slots(skip_slots)
    try:
        got = ndl._C._conv(nd.array(a, dtype="float64"), nd.array(w, dtype="float64"), s, p,
                           dilation=d)
    finally:
        ndl._C._skip_optional_slots(prev)
    ref = np_conv(a, w, s, (p, p), (p, p), d)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)
    tref = torch.nn.functional.conv2d(torch.tensor(a).permute(0, 3, 1, 2),
                                      torch.tensor(w).permute(3, 2, 0, 1), stride=s,
                                      padding=p, dilation=d).permute(0, 2, 3, 1)
    np.testing.assert_allclose(got.numpy(), tref.numpy(), rtol=1e-10, atol=1e-10)


@nd_only
@pytest.mark.parametrize("c", [1, 3, 4, 5, 16])
@pytest.mark.parametrize("k, s, p", [(7, 4, 3), (3, 1, 1), (3, 2, 2), (1, 1, 1)])
def test_array_conv_of_nchw_views(c, k, s, p):
    """NCHW input seen as NHWC (nn.Conv's), channels H*W apart: gathered by
    im2col with the padding on the fly (up to 4 channels), else a padded
    compact copy first (Note [Strided channels])."""
    nd = ndl.backend_ndarray
    a, w = np.random.randn(3, c, 11, 9), np.random.randn(k, k, c, 2)
    view = nd.array(a, dtype="float64").permute((0, 2, 3, 1))
    got = ndl._C._conv(view, nd.array(w, dtype="float64"), s, p)
    ref = np_conv(a.transpose(0, 2, 3, 1), w, s, (p, p), (p, p))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)


@nd_only
def test_dilated_kernel_that_does_not_fit_raises_and_the_class_has_none():
    nd = ndl.backend_ndarray
    a, w = nd.array(np.zeros((1, 5, 5, 2))), nd.array(np.zeros((3, 3, 2, 1)))
    with pytest.raises(ValueError, match=r"does not fit in the padded input.*\(1, 5, 5, 2\)"):
        ndl._C._conv(a, w, 1, 0, dilation=3)  # spans 7 rows of 5
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        ndl._C._conv(a, w, 1, 0, dilation=0)
    assert ndl._C._conv(a, w, 1, 1, dilation=3).shape == (1, 1, 1, 1)


@nd_only
def test_array_conv_reads_strided_views_and_mixes_dtypes_to_float64():
    nd = ndl.backend_ndarray
    a = np.random.randn(2, 7, 6, 3)
    w = np.random.randn(3, 3, 3, 4)
    av = nd.array(a.transpose(0, 2, 1, 3).copy(), dtype="float32").permute((0, 2, 1, 3))
    wv = nd.array(w.transpose(3, 2, 1, 0).copy(), dtype="float64").permute((3, 2, 1, 0))
    got = ndl._C._conv(av, wv, 2, 1)
    assert got.dtype == "float64"
    ref = np_conv(a.astype(np.float32).astype(np.float64), w, 2, (1, 1), (1, 1))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-12)
    x32 = ndl.Tensor(a, dtype="float32")
    w64 = ndl.Tensor(w, dtype="float64")
    y = ndl.conv(x32, w64, 1, 1)
    assert y.dtype == "float64"
    y.sum().backward()
    assert x32.grad.shape == x32.shape and w64.grad.shape == w64.shape


@nd_only
def test_array_conv_float32_matches_float64_closely():
    nd = ndl.backend_ndarray
    a = np.random.randn(4, 16, 16, 32)
    w = np.random.randn(3, 3, 32, 16) / 17
    got = ndl._C._conv(nd.array(a, dtype="float32"), nd.array(w, dtype="float32"), 1, 1).numpy()
    ref = np_conv(a, w, 1, (1, 1), (1, 1))
    assert np.max(np.abs(got - ref)) < 2e-5 * np.max(np.abs(ref))


# --------------------------------------------------------------------------
# float64 finite differences
# --------------------------------------------------------------------------

def fd_check(f, arrays, eps=1e-6, max_entries=40):
    """Gradients of sum(f(*inputs) * W) vs central differences, float64.
    f returns a Tensor or a TensorTuple; up to max_entries entries per input."""
    def outputs(arrs):
        r = f(*[ndl.Tensor(a, dtype="float64") for a in arrs])
        return [r] if isinstance(r, ndl.Tensor) else [r[i] for i in range(len(r))]

    outs = outputs(arrays)
    ws = [np.random.randn(*o.shape) for o in outs]

    def loss(arrs):
        return sum(float(np.sum(o.numpy() * w)) for o, w in zip(outputs(arrs), ws))

    leaves = [ndl.Tensor(a, dtype="float64") for a in arrays]
    r = f(*leaves)
    outs = [r] if isinstance(r, ndl.Tensor) else [r[i] for i in range(len(r))]
    total = None
    for o, w in zip(outs, ws):
        t = (o * ndl.Tensor(w, dtype="float64")).sum()
        total = t if total is None else total + t
    total.backward()
    rng = np.random.RandomState(0)
    for i, x in enumerate(arrays):
        got = leaves[i].grad.numpy()
        assert got.shape == x.shape, (got.shape, x.shape)
        idx = range(x.size) if x.size <= max_entries else rng.choice(x.size, max_entries, False)
        for j in idx:
            xp, xm = x.copy(), x.copy()
            xp.flat[j] += eps
            xm.flat[j] -= eps
            num = (loss(arrays[:i] + [xp] + arrays[i + 1:]) -
                   loss(arrays[:i] + [xm] + arrays[i + 1:])) / (2 * eps)
            assert abs(got.flat[j] - num) <= 1e-6 * max(1.0, abs(num)), (i, j, got.flat[j], num)


@pytest.mark.parametrize("n, h, w, k, s, p, ci, co", [
    (2, 5, 4, 3, 1, 1, 2, 3),
    (1, 7, 6, 3, 2, 1, 2, 2),
    (2, 6, 7, 2, 3, 0, 1, 2),
    (1, 4, 5, 3, 2, 3, 2, 1),   # padding larger than K-1
    (1, 5, 5, 5, 1, 0, 3, 2),   # one output pixel
    (2, 3, 2, 1, 2, 1, 2, 2),
])
def test_conv_finite_differences(n, h, w, k, s, p, ci, co):
    fd_check(lambda a, b: ndl.conv(a, b, s, p),
             [np.random.randn(n, h, w, ci), np.random.randn(k, k, ci, co)])


@pytest.mark.parametrize("shape, axes, d", [
    ((3, 4), (0,), 1), ((3, 4), (0, 1), 2), ((2, 3, 2), (1, 2), 0), ((2, 5), (1, 7), 1)])
def test_dilate_finite_differences(shape, axes, d):
    fd_check(lambda a: ndl.dilate(a, axes, d), [np.random.randn(*shape)])


@pytest.mark.parametrize("shape, axes, d", [
    ((6, 4), (0,), 1),       # multiples of d+1
    ((7, 5), (0, 1), 1),     # not multiples: the gradient must keep 7 x 5
    ((8, 5), (0, 1), 2),
    ((3, 10), (1,), 3),
    ((2, 5, 3), (1, 2, 5), 4),
])
def test_undilate_finite_differences(shape, axes, d):
    fd_check(lambda a: ndl.undilate(a, axes, d), [np.random.randn(*shape)])


@pytest.mark.parametrize("length, d", [(7, 1), (8, 2), (9, 2), (10, 3), (1, 2), (6, 5)])
def test_undilate_gradient_has_the_input_length(length, d, device):
    x = ndl.Tensor(np.random.randn(3, length), dtype="float64", device=device)
    y = ndl.undilate(x, (1,), d)
    n = (length + d) // (d + 1)
    assert y.shape == (3, n)
    np.testing.assert_array_equal(y.numpy(), x.numpy()[:, ::d + 1])
    g = np.random.randn(3, n)
    y.backward(ndl.Tensor(g, dtype="float64", device=device))
    expect = np.zeros((3, length))
    expect[:, ::d + 1] = g
    assert x.grad.shape == (3, length)
    np.testing.assert_array_equal(x.grad.numpy(), expect)
    # differentiable again: the gradient's own gradient is undilate back
    x.grad = None
    y = ndl.undilate(x, (1,), d)
    gt = ndl.Tensor(g, dtype="float64", device=device)
    y.backward(gt)
    (x.grad * ndl.Tensor(np.ones((3, length)), dtype="float64", device=device)).sum().backward()
    assert x.grad.device == device
    # contract numbers: dilate/undilate themselves are unchanged
    assert ndl.dilate(ndl.Tensor(np.ones((2, 3)), device=device), (1,), 2).shape == (2, 9)


@pytest.mark.parametrize("shape, axes", [((3, 4), (0,)), ((2, 3, 4), (0, 2)), ((5,), None)])
def test_flip_finite_differences(shape, axes):
    fd_check(lambda a: ndl.flip(a, axes), [np.random.randn(*shape)])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_stack_and_split_finite_differences(axis):
    fd_check(lambda a, b, c: ndl.stack([a, b, c], axis),
             [np.random.randn(2, 3), np.random.randn(2, 3), np.random.randn(2, 3)])
    shape = [2, 3, 4]
    fd_check(lambda a: ndl.split(a, axis), [np.random.randn(*shape)])


# --------------------------------------------------------------------------
# gradients of gradients
# --------------------------------------------------------------------------

@pytest.mark.parametrize("n, h, w, k, s, p, ci, co", [
    (2, 5, 5, 3, 1, 1, 2, 3),
    (2, 7, 6, 3, 2, 1, 3, 2),
    (1, 8, 5, 2, 3, 0, 2, 2),
    (2, 4, 5, 3, 2, 3, 1, 2),   # padding larger than K-1
    (1, 6, 6, 1, 2, 0, 2, 3),
    (2, 9, 7, 4, 3, 2, 2, 2),   # (C_out = 1 here breaks torch's own third derivative)
])
def test_grad_of_grad_vs_torch(n, h, w, k, s, p, ci, co, device):
    a, b = np.random.randn(n, h, w, ci), np.random.randn(k, k, ci, co)
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    out = torch_conv(ta, tb, s, p)
    g = np.random.randn(*out.shape)
    ga, gb = torch.autograd.grad((out * torch.tensor(g)).sum(), (ta, tb), create_graph=True)
    c1, c2 = np.random.randn(*a.shape), np.random.randn(*b.shape)
    l2 = (ga ** 2 * torch.tensor(c1)).sum() + (gb ** 2 * torch.tensor(c2)).sum()
    gga, ggb = torch.autograd.grad(l2, (ta, tb), create_graph=True)
    l3 = (gga ** 2).sum() + (ggb ** 2).sum()
    ggga, gggb = torch.autograd.grad(l3, (ta, tb))

    def T(v):
        return ndl.Tensor(v, dtype="float64", device=device)

    x, wt = T(a), T(b)
    y = ndl.conv(x, wt, s, p)
    (y * T(g)).sum().backward()
    xg, wg = x.grad, wt.grad
    np.testing.assert_allclose(xg.numpy(), ga.detach().numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(wg.numpy(), gb.detach().numpy(), rtol=1e-9, atol=1e-9)
    x.grad = wt.grad = None
    ((xg ** 2 * T(c1)).sum() + (wg ** 2 * T(c2)).sum()).backward()
    xgg, wgg = x.grad, wt.grad
    np.testing.assert_allclose(xgg.numpy(), gga.detach().numpy(), rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(wgg.numpy(), ggb.detach().numpy(), rtol=1e-8, atol=1e-9)
    x.grad = wt.grad = None
    ((xgg ** 2).sum() + (wgg ** 2).sum()).backward()
    np.testing.assert_allclose(x.grad.numpy(), ggga.numpy(), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(wt.grad.numpy(), gggb.numpy(), rtol=1e-8, atol=1e-8)


def test_strided_weight_gradient_does_not_dilate(device):
    """Note [Conv's gradients are convs]: the weight's gradient of a strided
    conv reads the output gradient as a kernel with its taps s apart; the
    dilated copy (s^2 times the multiply-adds) is only made for the input's
    gradient."""
    x = ndl.Tensor(np.random.randn(2, 16, 16, 3), device=device, dtype="float64",
                   requires_grad=False)
    w = ndl.Tensor(np.random.randn(7, 7, 3, 4), device=device, dtype="float64")
    y = ndl.conv(x, w, 4, 3)
    y.backward(ndl.Tensor(np.ones(y.shape), requires_grad=True, device=device))
    names = [type(v.op).__name__ for v in ndl.autograd.find_topo_sort([w.grad])
             if v.op is not None]
    assert "Conv" in names and "Dilate" not in names, names
    tx = torch.tensor(x.numpy().transpose(0, 3, 1, 2))
    tw = torch.tensor(w.numpy().transpose(3, 2, 0, 1), requires_grad=True)
    torch.nn.functional.conv2d(tx, tw, stride=4, padding=3).sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy().transpose(2, 3, 1, 0),
                               rtol=1e-9, atol=1e-9)


def test_gradient_graph_is_made_of_ops(device):
    """The gradients are graph nodes built from Conv, Flip, Permute ...; a
    strided conv's input gradient is one Conv node, the transposed conv (Note
    [Transposed conv]), with no Dilate of the output gradient, on any device."""
    def names(s):
        x = ndl.Tensor(np.random.randn(2, 7, 6, 2), device=device)
        w = ndl.Tensor(np.random.randn(3, 3, 2, 3), device=device)
        y = ndl.conv(x, w, s, 1)
        y.backward(ndl.Tensor(np.ones(y.shape), requires_grad=True, device=device))  # records nodes
        return [type(v.op).__name__ for v in ndl.autograd.find_topo_sort([x.grad, w.grad])
                if v.op is not None]
    assert {"Conv", "Flip", "Permute"} <= set(names(1)), names(1)
    strided = names(2)
    assert "Conv" in strided and "Dilate" not in strided, strided


# --------------------------------------------------------------------------
# np mode: this file and test_nn_conv.py again, in a child process
# --------------------------------------------------------------------------

@nd_only
def test_np_mode_in_a_child_process():
    env = dict(os.environ, NEEDLE_BACKEND="np")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         os.path.join("tests", "test_conv.py"), os.path.join("tests", "test_nn_conv.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    tail = r.stdout[-3000:] + r.stderr[-2000:]
    assert r.returncode == 0, tail
    summary = r.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 60, tail
