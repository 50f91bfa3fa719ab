"""nn.Conv and nn.BatchNorm2d (API.md 6.2, 6.3, items 10.3 and 10.21).

Construction (attributes, parameter order, the exact random draws), forward
and gradients vs torch.nn.Conv2d with the weights copied (KKIO -> OIHW), and
Conv -> BatchNorm2d -> ReLU vs torch in train and eval mode with the running
statistics. test_conv.py runs this file again in np mode.
"""
import math

import numpy as np
import pytest
import torch

import needle as ndl
from needle import nn

IS_NP = ndl.BACKEND == "np"


def tensor(x, dtype="float32", requires_grad=True, device=None):
    return ndl.Tensor(np.asarray(x), dtype=dtype, requires_grad=requires_grad, device=device)


def torch_conv2d(conv, dtype=torch.float64):
    """A torch.nn.Conv2d holding conv's weights (float64: an exact reference)."""
    k = conv.kernel_size
    t = torch.nn.Conv2d(conv.in_channels, conv.out_channels, k, stride=conv.stride,
                        padding=k // 2, bias=conv.bias is not None, dtype=dtype)
    with torch.no_grad():
        t.weight.copy_(torch.tensor(conv.weight.numpy().transpose(3, 2, 0, 1)))
        if conv.bias is not None:
            t.bias.copy_(torch.tensor(conv.bias.numpy()))
    return t


# --------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------

@pytest.mark.parametrize("ci, co, k, bias", [(3, 8, 3, True), (4, 2, 5, False), (1, 1, 1, True),
                                             (2, 3, 4, True)])
def test_conv_construction_draws_weight_then_bias(ci, co, k, bias, device):
    np.random.seed(7)
    conv = nn.Conv(ci, co, k, bias=bias, device=device)
    np.random.seed(7)
    wb = math.sqrt(2.0) * math.sqrt(3.0 / (ci * k * k))
    w_expect = np.random.rand(k, k, ci, co) * 2 * wb - wb
    assert conv.weight.shape == (k, k, ci, co) and conv.weight.dtype == "float32"
    assert conv.weight.device == device
    np.testing.assert_allclose(conv.weight.numpy(), w_expect, rtol=1e-6, atol=1e-6)
    assert isinstance(conv.weight, nn.Parameter)
    if bias:
        bb = 1.0 / math.sqrt(ci * k * k)
        b_expect = np.random.rand(co) * 2 * bb - bb
        assert conv.bias.shape == (co,)
        np.testing.assert_allclose(conv.bias.numpy(), b_expect, rtol=1e-6, atol=1e-6)
        ps = conv.parameters()
        assert len(ps) == 2 and ps[0] is conv.weight and ps[1] is conv.bias
    else:
        assert conv.bias is None and conv.parameters() == [conv.weight]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (ci, co, k, 1)
    assert conv.padding == k // 2


def test_conv_tuple_arguments_take_the_first_element_and_dtype(device):
    conv = nn.Conv(2, 3, (5, 5), stride=(2, 2), dtype="float64", device=device)
    assert conv.kernel_size == 5 and conv.stride == 2
    assert conv.weight.dtype == "float64" and conv.bias.dtype == "float64"
    assert conv.bias.device == device
    y = conv(tensor(np.random.randn(1, 2, 9, 9), "float64", device=device))
    assert y.shape == (1, 3, 5, 5) and y.dtype == "float64" and y.device == device


# --------------------------------------------------------------------------
# forward and gradients vs torch
# --------------------------------------------------------------------------

@pytest.mark.parametrize("ci, co, k, s, bias, n, h, w", [
    (3, 8, 3, 1, True, 2, 8, 8),
    (4, 5, 5, 2, True, 2, 9, 7),
    (2, 3, 1, 1, False, 3, 5, 6),
    (3, 4, 4, 2, True, 1, 8, 8),     # even kernel: padding 2
    (2, 2, 3, 3, True, 2, 10, 11),
    (16, 8, 3, 1, True, 4, 12, 12),
])
def test_conv_vs_torch(ci, co, k, s, bias, n, h, w, device):
    conv = nn.Conv(ci, co, k, stride=s, bias=bias, device=device)
    t = torch_conv2d(conv)
    x = np.random.randn(n, ci, h, w).astype(np.float32)
    xn = tensor(x, device=device)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y, yt = conv(xn), t(xt)
    assert y.shape == tuple(yt.shape) and y.dtype == "float32" and y.device == device
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-4, atol=1e-4)
    g = np.random.randn(*y.shape).astype(np.float32)
    y.backward(tensor(g, requires_grad=False, device=device))
    yt.backward(torch.tensor(g, dtype=torch.float64))
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(conv.weight.grad.numpy(),
                               t.weight.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=2e-4)
    if bias:
        np.testing.assert_allclose(conv.bias.grad.numpy(), t.bias.grad.numpy(),
                                   rtol=1e-4, atol=2e-4)


def test_conv_reads_attributes_at_each_forward(device):
    conv = nn.Conv(2, 3, 3, device=device)
    x = tensor(np.random.randn(1, 2, 5, 5), device=device)
    b = np.random.randn(3).astype(np.float32)
    conv.bias = None
    y_nobias = conv(x).numpy()
    conv.bias = nn.Parameter(tensor(b, device=device))
    np.testing.assert_allclose(conv(x).numpy(), y_nobias + b[None, :, None, None],
                               rtol=1e-5, atol=1e-5)
    conv.stride = 2
    assert conv(x).shape == (1, 3, 3, 3)


# --------------------------------------------------------------------------
# Conv -> BatchNorm2d -> ReLU, train and eval, vs torch
# --------------------------------------------------------------------------

def test_conv_batchnorm2d_relu_vs_torch_train_then_eval(device):
    ci, co, n = 3, 4, 4
    conv, bn = nn.Conv(ci, co, 3, device=device), nn.BatchNorm2d(co, device=device)
    model = nn.Sequential(conv, bn, nn.ReLU())
    w, b = np.random.randn(co).astype(np.float32), np.random.randn(co).astype(np.float32)
    bn.weight = nn.Parameter(tensor(w, device=device))
    bn.bias = nn.Parameter(tensor(b, device=device))
    tconv = torch_conv2d(conv)
    tbn = torch.nn.BatchNorm2d(co, eps=1e-5, momentum=0.1, dtype=torch.float64)
    with torch.no_grad():
        tbn.weight.copy_(torch.tensor(w))
        tbn.bias.copy_(torch.tensor(b))
    tmodel = torch.nn.Sequential(tconv, tbn, torch.nn.ReLU())
    assert len(model.parameters()) == 4
    rm, rv = np.zeros(co), np.ones(co)
    for step in range(3):
        x = (np.random.randn(n, ci, 6, 5) * 2 + 0.5).astype(np.float32)
        xn = tensor(x, device=device)
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        y, yt = model(xn), tmodel(xt)
        assert y.device == device and bn.running_mean.device == device
        np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=2e-4, atol=2e-4)
        g = np.random.randn(*y.shape).astype(np.float32)
        y.backward(tensor(g, requires_grad=False, device=device))
        yt.backward(torch.tensor(g, dtype=torch.float64))
        np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(conv.weight.grad.numpy(),
                                   tconv.weight.grad.numpy().transpose(2, 3, 1, 0),
                                   rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(bn.weight.grad.numpy(), tbn.weight.grad.numpy(),
                                   rtol=1e-3, atol=1e-3)
        for p in list(tmodel.parameters()):
            p.grad = None
        for p in model.parameters():
            p.grad = None
        # running statistics: biased batch variance (item 10.1), torch keeps the unbiased one
        z = tconv(torch.tensor(x, dtype=torch.float64)).detach().numpy()
        rm = 0.9 * rm + 0.1 * z.mean(axis=(0, 2, 3))
        rv = 0.9 * rv + 0.1 * z.var(axis=(0, 2, 3))
        np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(bn.running_var.numpy(), rv, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(bn.running_mean.numpy(), tbn.running_mean.numpy(),
                                   rtol=1e-4, atol=1e-4)
    stats = bn.running_mean.numpy().copy()
    model.eval()
    assert not bn.training and not conv.training
    with torch.no_grad():  # torch in eval with needle's (biased) statistics
        tbn.running_mean.copy_(torch.tensor(rm))
        tbn.running_var.copy_(torch.tensor(rv))
    tmodel.eval()
    x = np.random.randn(2, ci, 5, 7).astype(np.float32)
    xn = tensor(x, device=device)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y, yt = model(xn), tmodel(xt)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=2e-4, atol=2e-4)
    g = np.random.randn(*y.shape).astype(np.float32)
    y.backward(tensor(g, requires_grad=False, device=device))
    yt.backward(torch.tensor(g, dtype=torch.float64))
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(bn.running_mean.numpy(), stats)  # untouched in eval


def test_batchnorm2d_is_exported_from_nn_conv():
    from needle.nn import nn_conv
    assert nn_conv.BatchNorm2d is nn.BatchNorm2d and nn_conv.Conv is nn.Conv
    assert {"Conv", "BatchNorm2d"} <= set(nn_conv.__all__)
    bn = nn.BatchNorm2d(3, eps=1e-3, momentum=0.2)
    assert (bn.dim, bn.eps, bn.momentum) == (3, 1e-3, 0.2)
    assert len(bn.parameters()) == 2


def test_conv_bad_input_raises(device):
    conv = nn.Conv(3, 4, 3, device=device)
    with pytest.raises(ValueError, match="C_in = 2 channels but the weight expects 3"):
        conv(tensor(np.zeros((1, 2, 5, 5)), device=device))
    # padding K//2 makes every input fit: a 1x1 image through a 7x7 kernel is 1x1
    y = nn.Conv(3, 4, 7, device=device)(tensor(np.zeros((1, 3, 1, 1)), device=device))
    assert y.shape == (1, 4, 1, 1)
