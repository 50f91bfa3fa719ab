"""Results of the autograd's elementwise ops keep a permuted operand's axis order
(Note [Results in their operand's order], csrc/ndarray/ndarray_ops.c); the
NDArray operators stay compact (API.md 2.8). Values against NumPy and PyTorch.
"""
import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from needle import backend_ndarray as nd


def nhwc_as_nchw(x: np.ndarray, device) -> ndl.Tensor:
    """An (N, C, H, W) tensor whose data is (N, H, W, C) compact (nn.Conv's output)."""
    nhwc = ndl.Tensor(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), device=device)
    return nhwc.transpose((2, 3)).transpose((1, 2))  # as nn.Conv returns it


def order(t: ndl.Tensor) -> tuple:
    """The axes by decreasing stride: the order the data lies in."""
    s = t.realize_cached_data().strides
    return tuple(sorted(range(len(s)), key=lambda i: -s[i]))


def test_ops_of_a_permuted_tensor_keep_its_order(device):
    x = np.random.randn(2, 3, 4, 5).astype("float32")
    y = np.random.randn(2, 3, 4, 5).astype("float32")
    a, b = nhwc_as_nchw(x, device), nhwc_as_nchw(y, device)
    nhwc = (0, 2, 3, 1)
    cases = {
        "relu": (ndl.relu(a), np.maximum(x, 0)),
        "exp": (ndl.exp(a), nd.array(x, device=device).exp().numpy()),  # the same bits
        "add": (a + b, x + y),
        "mul": (a * b, x * y),
        "scalar": (a * 3.0, x * np.float32(3.0)),
        "rsub": (2.0 - a, np.float32(2.0) - x),
        "broadcast bias": (a + ndl.Tensor(y[:1, :, :1, :1], device=device).broadcast_to(a.shape),
                           x + y[:1, :, :1, :1]),
    }
    for name, (got, want) in cases.items():
        assert got.shape == want.shape, name
        assert order(got) == nhwc, f"{name}: data in order {order(got)}"
        np.testing.assert_array_equal(got.numpy(), want, err_msg=name)
    np.testing.assert_allclose(ndl.exp(a).numpy(), np.exp(x), rtol=1e-6)


def test_the_first_permuted_operand_gives_the_order(device):
    x = np.random.randn(2, 3, 4, 5).astype("float32")
    compact = ndl.Tensor(x, device=device)
    perm = nhwc_as_nchw(x, device)
    np.testing.assert_array_equal((compact + perm).numpy(), x + x)
    assert order(compact + perm) == (0, 2, 3, 1)  # the compact one has no other order
    assert order(perm + compact) == (0, 2, 3, 1)
    # a broadcast operand has no order of its own: the other one's counts
    row = ndl.Tensor(x[:1, :1, :1, :], device=device).broadcast_to(x.shape)
    assert order(row + perm) == (0, 2, 3, 1)


def test_views_that_are_not_permuted_compact_arrays_give_compact_results(device):
    x = np.random.randn(6, 8).astype("float32")
    base = nd.array(x, device=device)
    for name, view, ref in [
        ("sliced", base[::2, 1::3], x[::2, 1::3]),
        ("sliced transposed", base[::2, :].permute((1, 0)), x[::2, :].T),
        ("broadcast", nd.array(x[:1], device=device).broadcast_to((6, 8)),
         np.broadcast_to(x[:1], (6, 8))),
        ("length-1 axes only out of order", nd.array(x.reshape(6, 1, 8), device=device)
         .permute((1, 0, 2)), x.reshape(6, 1, 8).transpose(1, 0, 2)),
    ]:
        got = ndl.exp(ndl.Tensor(view, device=device)).realize_cached_data()
        assert got.is_compact(), name
        np.testing.assert_allclose(got.numpy(), np.exp(ref), rtol=1e-6, err_msg=name)


def test_ndarray_operators_stay_compact(device):
    a = nd.array(np.random.randn(3, 4, 5).astype("float32"), device=device).permute((2, 0, 1))
    for r in (a + a, a * 2.0, -a, a.exp(), a >= 0.0, a.maximum(a)):
        assert r.is_compact() and r.shape == (5, 3, 4)


def test_conv_block_forward_and_gradients_match_torch(device):
    # nn.Conv -> BatchNorm2d -> ReLU -> residual sum: the chain whose NHWC data the
    # elementwise ops now keep; values and every gradient against PyTorch
    torch = pytest.importorskip("torch")
    np.random.seed(0)
    x = np.random.randn(2, 4, 6, 6).astype("float32")
    conv = nn.Conv(4, 4, 3, device=device)
    bn = nn.BatchNorm2d(4, device=device)
    xt = ndl.Tensor(x, device=device, requires_grad=True)
    h = ndl.relu(bn(conv(xt)))
    out = h + xt
    (out * out).sum().backward()

    tx = torch.tensor(x, requires_grad=True)
    tconv = torch.nn.Conv2d(4, 4, 3, padding=1)
    tconv.weight.data = torch.tensor(conv.weight.numpy().transpose(3, 2, 0, 1))
    tconv.bias.data = torch.tensor(conv.bias.numpy())
    tbn = torch.nn.BatchNorm2d(4, eps=bn.eps, momentum=bn.momentum)
    tout = torch.relu(tbn(tconv(tx))) + tx
    (tout * tout).sum().backward()

    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(conv.weight.grad.numpy(),
                               tconv.weight.grad.numpy().transpose(2, 3, 1, 0),
                               rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(bn.weight.grad.numpy(), tbn.weight.grad.numpy(),
                               rtol=1e-3, atol=1e-3)
