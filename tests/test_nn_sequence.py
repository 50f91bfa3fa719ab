"""needle.nn sequence layers (API.md 6.5) and the ops behind them.

- RNNCell / RNN / LSTMCell / LSTM against torch.nn with the weights copied
  (transposed: needle stores them input-major): outputs, final states, the
  gradient of every parameter, of the input and of the initial state, for
  tanh and relu, 1-2 layers, with and without bias and initial state, float32
  and float64. The upstream gradients are random (sum(y * G) is
  differentiated), so a wrong gradient cannot hide behind an all-ones seed.
- The layers give the per-step formula's numbers bit for bit (one matmul for
  all steps' X @ W_ih, the fused gate op); construction draws exactly the
  contract's numbers in the contract's order.
- The fused gate op `lstm_gates` against its composition from sigmoid/tanh
  ops: values bit for bit (fused loop and composed fallback), gradients,
  float64 finite differences, gradients of gradients. The same for
  `gather_rows` / `scatter_rows` (Embedding's lookup and its gradient).
- Embedding against torch.nn.Embedding and against one_hot @ weight.
- np mode, in a child process (NEEDLE_BACKEND is read once per process).
- Bad input raises exceptions that name the shapes.
"""
import gc
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn
from needle import _C, ops
from needle.nn.nn_sequence import _split_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = {"float32": dict(fwd=dict(rtol=1e-5, atol=1e-6), bwd=dict(rtol=1e-4, atol=1e-5)),
       "float64": dict(fwd=dict(rtol=1e-10, atol=1e-12), bwd=dict(rtol=1e-9, atol=1e-11))}
TORCH_DT = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def nd(a, dtype, requires_grad=True, device=None):
    return ndl.Tensor(np.asarray(a), dtype=dtype, requires_grad=requires_grad, device=device)


def th(a, dtype, requires_grad=True):
    return torch.tensor(np.asarray(a), dtype=TORCH_DT[dtype], requires_grad=requires_grad)


def close(a, b, tol):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a.numpy()
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b.numpy()
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, **tol)


def copy_cell(cell, tcell, suffix=""):
    """needle cell -> torch weights (transposed)."""
    with torch.no_grad():
        getattr(tcell, "weight_ih" + suffix).copy_(torch.from_numpy(cell.W_ih.numpy().T.copy()))
        getattr(tcell, "weight_hh" + suffix).copy_(torch.from_numpy(cell.W_hh.numpy().T.copy()))
        if cell.bias_ih is not None:
            getattr(tcell, "bias_ih" + suffix).copy_(torch.from_numpy(cell.bias_ih.numpy()))
            getattr(tcell, "bias_hh" + suffix).copy_(torch.from_numpy(cell.bias_hh.numpy()))


def check_cell_grads(cell, tcell, tol, suffix=""):
    close(cell.W_ih.grad, getattr(tcell, "weight_ih" + suffix).grad.T, tol)
    close(cell.W_hh.grad, getattr(tcell, "weight_hh" + suffix).grad.T, tol)
    if cell.bias_ih is not None:
        close(cell.bias_ih.grad, getattr(tcell, "bias_ih" + suffix).grad, tol)
        close(cell.bias_hh.grad, getattr(tcell, "bias_hh" + suffix).grad, tol)


def weighted_sum(ys, gs, dtype, lib):
    """sum(y * g) over the pairs; the needle g's on the y's device."""
    mk = (lambda g: nd(g, dtype, False, device=dev)) if lib == "nd" \
        else (lambda g: th(g, dtype, False))
    dev = ys[0].device if lib == "nd" else None
    total = None
    for y, g in zip(ys, gs):
        term = (y * mk(g)).sum()
        total = term if total is None else total + term
    return total


# --------------------------------------------------------------------------
# cells and layers against torch
# --------------------------------------------------------------------------

CELL_CASES = [  # (nonlinearity, bias, with_state, dtype, batch)
    ("tanh", True, True, "float32", 3), ("tanh", False, False, "float32", 2),
    ("relu", True, False, "float32", 3), ("relu", False, True, "float64", 1),
    ("tanh", True, True, "float64", 4),
]


@pytest.mark.parametrize("nonlin,bias,with_state,dtype,bs", CELL_CASES)
def test_rnn_cell_matches_torch(nonlin, bias, with_state, dtype, bs, device):
    I, H = 5, 7
    cell = nn.RNNCell(I, H, bias=bias, nonlinearity=nonlin, dtype=dtype, device=device)
    tcell = torch.nn.RNNCell(I, H, bias=bias, nonlinearity=nonlin, dtype=TORCH_DT[dtype])
    copy_cell(cell, tcell)
    x, h0, G = np.random.randn(bs, I), np.random.randn(bs, H), np.random.randn(bs, H)
    X, Xt = nd(x, dtype, device=device), th(x, dtype)
    H0, H0t = (nd(h0, dtype, device=device), th(h0, dtype)) if with_state else (None, None)
    y, yt = cell(X, H0), tcell(Xt, H0t)
    assert y.dtype == dtype and y.device == X.device
    close(y, yt, TOL[dtype]["fwd"])
    weighted_sum([y], [G], dtype, "nd").backward()
    weighted_sum([yt], [G], dtype, "th").backward()
    check_cell_grads(cell, tcell, TOL[dtype]["bwd"])
    close(X.grad, Xt.grad, TOL[dtype]["bwd"])
    if with_state:
        close(H0.grad, H0t.grad, TOL[dtype]["bwd"])


@pytest.mark.parametrize("bias,with_state,dtype,bs", [
    (True, True, "float32", 3), (False, False, "float32", 2), (True, False, "float64", 1),
    (False, True, "float64", 4)])
def test_lstm_cell_matches_torch(bias, with_state, dtype, bs, device):
    I, H = 5, 6
    cell = nn.LSTMCell(I, H, bias=bias, dtype=dtype, device=device)
    tcell = torch.nn.LSTMCell(I, H, bias=bias, dtype=TORCH_DT[dtype])
    copy_cell(cell, tcell)
    x = np.random.randn(bs, I)
    h0, c0 = np.random.randn(bs, H), np.random.randn(bs, H)
    X, Xt = nd(x, dtype, device=device), th(x, dtype)
    state = (nd(h0, dtype, device=device), nd(c0, dtype, device=device)) if with_state else None
    tstate = (th(h0, dtype), th(c0, dtype)) if with_state else None
    out, tout = cell(X, state), tcell(Xt, tstate)
    assert type(out) is tuple and len(out) == 2
    for a, b in zip(out, tout):
        close(a, b, TOL[dtype]["fwd"])
    G = [np.random.randn(bs, H) for _ in range(2)]
    weighted_sum(out, G, dtype, "nd").backward()
    weighted_sum(tout, G, dtype, "th").backward()
    check_cell_grads(cell, tcell, TOL[dtype]["bwd"])
    close(X.grad, Xt.grad, TOL[dtype]["bwd"])
    if with_state:
        for a, b in zip(state, tstate):
            close(a.grad, b.grad, TOL[dtype]["bwd"])


RNN_CASES = [  # (nonlinearity, layers, bias, with_state, dtype, seq_len, batch)
    ("tanh", 1, True, False, "float32", 5, 3), ("tanh", 2, True, True, "float32", 6, 2),
    ("relu", 2, False, False, "float32", 4, 3), ("relu", 1, True, True, "float64", 5, 2),
    ("tanh", 2, False, True, "float64", 7, 1), ("tanh", 2, True, False, "float64", 12, 2),
]


@pytest.mark.parametrize("nonlin,L,bias,with_state,dtype,T,bs", RNN_CASES)
def test_rnn_matches_torch(nonlin, L, bias, with_state, dtype, T, bs, device):
    I, H = 4, 5
    m = nn.RNN(I, H, num_layers=L, bias=bias, nonlinearity=nonlin, dtype=dtype, device=device)
    tm = torch.nn.RNN(I, H, num_layers=L, bias=bias, nonlinearity=nonlin,
                      dtype=TORCH_DT[dtype])
    assert len(m.rnn_cells) == L
    for k, cell in enumerate(m.rnn_cells):
        copy_cell(cell, tm, f"_l{k}")
    x, h0 = np.random.randn(T, bs, I), np.random.randn(L, bs, H)
    X, Xt = nd(x, dtype, device=device), th(x, dtype)
    H0, H0t = (nd(h0, dtype, device=device), th(h0, dtype)) if with_state else (None, None)
    out, tout = m(X, H0), tm(Xt, H0t)
    assert type(out) is tuple and out[0].shape == (T, bs, H) and out[1].shape == (L, bs, H)
    for a, b in zip(out, tout):
        close(a, b, TOL[dtype]["fwd"])
    G = [np.random.randn(T, bs, H), np.random.randn(L, bs, H)]
    weighted_sum(out, G, dtype, "nd").backward()
    weighted_sum(tout, G, dtype, "th").backward()
    for k, cell in enumerate(m.rnn_cells):
        check_cell_grads(cell, tm, TOL[dtype]["bwd"], f"_l{k}")
    close(X.grad, Xt.grad, TOL[dtype]["bwd"])
    if with_state:
        close(H0.grad, H0t.grad, TOL[dtype]["bwd"])


LSTM_CASES = [  # (layers, bias, with_state, dtype, seq_len, batch)
    (1, True, False, "float32", 5, 3), (2, True, True, "float32", 6, 2),
    (2, False, False, "float32", 4, 3), (1, False, True, "float64", 5, 2),
    (2, True, True, "float64", 7, 1), (2, False, True, "float64", 10, 2),
]


@pytest.mark.parametrize("L,bias,with_state,dtype,T,bs", LSTM_CASES)
def test_lstm_matches_torch(L, bias, with_state, dtype, T, bs, device):
    I, H = 4, 5
    m = nn.LSTM(I, H, num_layers=L, bias=bias, dtype=dtype, device=device)
    tm = torch.nn.LSTM(I, H, num_layers=L, bias=bias, dtype=TORCH_DT[dtype])
    assert len(m.lstm_cells) == L
    for k, cell in enumerate(m.lstm_cells):
        copy_cell(cell, tm, f"_l{k}")
    x = np.random.randn(T, bs, I)
    h0, c0 = np.random.randn(L, bs, H), np.random.randn(L, bs, H)
    X, Xt = nd(x, dtype, device=device), th(x, dtype)
    state = (nd(h0, dtype, device=device), nd(c0, dtype, device=device)) if with_state else None
    tstate = (th(h0, dtype), th(c0, dtype)) if with_state else None
    out, (h_n, c_n) = m(X, state)
    tout, (th_n, tc_n) = tm(Xt, tstate)
    res = m(X, state)
    assert type(res) is tuple and type(res[1]) is tuple
    for a, b in zip((out, h_n, c_n), (tout, th_n, tc_n)):
        close(a, b, TOL[dtype]["fwd"])
        assert a.dtype == dtype and a.device == X.device
    G = [np.random.randn(T, bs, H), np.random.randn(L, bs, H), np.random.randn(L, bs, H)]
    weighted_sum((out, h_n, c_n), G, dtype, "nd").backward()
    weighted_sum((tout, th_n, tc_n), G, dtype, "th").backward()
    for k, cell in enumerate(m.lstm_cells):
        check_cell_grads(cell, tm, TOL[dtype]["bwd"], f"_l{k}")
    close(X.grad, Xt.grad, TOL[dtype]["bwd"])
    if with_state:
        for a, b in zip(state, tstate):
            close(a.grad, b.grad, TOL[dtype]["bwd"])


def test_lstm_output_only_gradient_matches_torch(device):
    """Only `output` is used: the final states get no adjoint (zeros inside)."""
    I, H, T, bs = 3, 4, 6, 2
    m, tm = nn.LSTM(I, H, num_layers=2, device=device), torch.nn.LSTM(I, H, num_layers=2)
    for k, cell in enumerate(m.lstm_cells):
        copy_cell(cell, tm, f"_l{k}")
    x = np.random.randn(T, bs, I)
    X, Xt = nd(x, "float32", device=device), th(x, "float32")
    m(X)[0].sum().backward()
    tm(Xt)[0].sum().backward()
    close(X.grad, Xt.grad, TOL["float32"]["bwd"])
    for k, cell in enumerate(m.lstm_cells):
        check_cell_grads(cell, tm, TOL["float32"]["bwd"], f"_l{k}")


# --------------------------------------------------------------------------
# the per-step formula's numbers; construction
# --------------------------------------------------------------------------

@pytest.mark.parametrize("bs", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layers_equal_their_cells_unrolled_bit_for_bit(bs, dtype, device):
    """X @ W_ih for all steps at once, the split and the fused gates give the
    numbers of the cells applied step by step (API.md 6.5's formula)."""
    I, H, T, L = 4, 5, 6, 2
    lstm = nn.LSTM(I, H, num_layers=L, dtype=dtype, device=device)
    rnn = nn.RNN(I, H, num_layers=L, nonlinearity="relu", dtype=dtype, device=device)
    X = nd(np.random.randn(T, bs, I), dtype, False, device=device)
    out, (h_n, c_n) = lstm(X)
    xs, hs, cs = list(ops.split(X, 0)), [], []
    for cell in lstm.lstm_cells:
        h = c = None
        for t in range(T):
            h, c = cell(xs[t], None if h is None else (h, c))
            xs[t] = h
        hs.append(h)
        cs.append(c)
    np.testing.assert_array_equal(out.numpy(), ops.stack(xs, 0).numpy())
    np.testing.assert_array_equal(h_n.numpy(), ops.stack(hs, 0).numpy())
    np.testing.assert_array_equal(c_n.numpy(), ops.stack(cs, 0).numpy())
    out, h_n = rnn(X)
    xs, hs = list(ops.split(X, 0)), []
    for cell in rnn.rnn_cells:
        h = None
        for t in range(T):
            xs[t] = h = cell(xs[t], h)
        hs.append(h)
    np.testing.assert_array_equal(out.numpy(), ops.stack(xs, 0).numpy())
    np.testing.assert_array_equal(h_n.numpy(), ops.stack(hs, 0).numpy())


def uniform_draws(shapes, k):
    return [np.random.rand(*s) * (2 * k) - k for s in shapes]


@pytest.mark.parametrize("kind", ["RNNCell", "RNN", "LSTMCell", "LSTM"])
@pytest.mark.parametrize("bias", [True, False])
def test_construction_draws_in_contract_order(kind, bias, device):
    """W_ih, W_hh, bias_ih, bias_hh per layer, uniform(-1/sqrt(H), 1/sqrt(H)),
    nothing else drawn; weights input-major, biases 1-D."""
    I, H, L = 3, 4, 2
    g = 4 if kind.startswith("LSTM") else 1
    layers = L if kind in ("RNN", "LSTM") else 1
    np.random.seed(7)
    m = {"RNNCell": lambda: nn.RNNCell(I, H, bias=bias, device=device),
         "RNN": lambda: nn.RNN(I, H, num_layers=L, bias=bias, device=device),
         "LSTMCell": lambda: nn.LSTMCell(I, H, bias=bias, device=device),
         "LSTM": lambda: nn.LSTM(I, H, num_layers=L, bias=bias, device=device)}[kind]()
    next_draw = np.random.rand()
    np.random.seed(7)
    params = m.parameters()
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in params)
    assert len(params) == layers * (4 if bias else 2)
    expected = []
    for k in range(layers):
        shapes = [(I if k == 0 else H, g * H), (H, g * H)] + ([(g * H,), (g * H,)] if bias else [])
        expected += uniform_draws(shapes, 1 / np.sqrt(H))
    assert np.random.rand() == next_draw
    for p, e in zip(params, expected):
        assert p.shape == e.shape and p.dtype == "float32"
        np.testing.assert_allclose(p.numpy(), e, rtol=0, atol=1e-6)
    cells = getattr(m, "rnn_cells", None) or getattr(m, "lstm_cells", None) or [m]
    assert all(isinstance(c, nn.RNNCell if g == 1 else nn.LSTMCell) for c in cells)
    if not bias:
        assert all(c.bias_ih is None and c.bias_hh is None for c in cells)


def test_embedding_draws_randn(device):
    np.random.seed(3)
    emb = nn.Embedding(6, 4, device=device)
    np.random.seed(3)
    expected = np.random.randn(6, 4)
    assert emb.parameters() == [emb.weight] and emb.weight.shape == (6, 4)
    np.testing.assert_allclose(emb.weight.numpy(), expected, rtol=1e-6)


def test_bad_nonlinearity_is_rejected_before_drawing():
    np.random.seed(0)
    with pytest.raises(ValueError, match="nonlinearity.*'sigmoid'"):
        nn.RNNCell(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="nonlinearity.*'gelu'"):
        nn.RNN(3, 4, nonlinearity="gelu")
    first = np.random.rand()
    np.random.seed(0)
    assert np.random.rand() == first


def test_forward_reads_attributes_set_after_construction(device):
    cell = nn.LSTMCell(3, 4, device=device)
    cell.bias_ih = cell.bias_hh = None
    X = ndl.init.randn(2, 3, device=device)
    h, c = cell(X)
    z = X @ cell.W_ih + ndl.init.zeros(2, 4, device=device) @ cell.W_hh
    ref = ops.lstm_gates(z, ndl.init.zeros(2, 4, device=device))
    np.testing.assert_array_equal(h.numpy(), ref[0].numpy())


def test_split_steps_matches_split_values_and_gradient(device):
    for T in (1, 2, 5, 12, 40):
        x = np.random.randn(T, 3, 2)
        X = nd(x, "float64", device=device)
        steps = _split_steps(X)
        assert len(steps) == T
        for t, s in enumerate(steps):
            np.testing.assert_array_equal(s.numpy(), x[t])
        G = np.random.randn(T, 3, 2)
        (ops.stack(steps, 0) * nd(G, "float64", False, device=device)).sum().backward()
        np.testing.assert_array_equal(X.grad.numpy(), G)


# --------------------------------------------------------------------------
# the fused gate op
# --------------------------------------------------------------------------

def gates_composed(z, c):
    """lstm_gates from ops: blocks i, f, g, o; sigmoid/tanh ops."""
    bs, H4 = z.shape
    H = H4 // 4
    parts = ops.split(z.reshape((bs, 4, H)), 1)
    i, f, g, o = ops.sigmoid(parts[0]), ops.sigmoid(parts[1]), ops.tanh(parts[2]), \
        ops.sigmoid(parts[3])
    c2 = f * c + i * g
    return o * ops.tanh(c2), c2


@pytest.fixture(params=["fused", "composed"])
def gates_path(request):
    """Run with the fused host loop, or with the nda_* composition that np
    mode and devices without host memory use."""
    prev = _C._skip_optional_slots(request.param == "composed")
    yield request.param
    _C._skip_optional_slots(prev)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bs,H", [(1, 1), (3, 5), (4, 64)])
def test_lstm_gates_matches_composition(gates_path, dtype, bs, H, device):
    z = np.random.randn(bs, 4 * H) * np.random.choice([0.1, 1, 10, 60], size=(bs, 4 * H))
    c = np.random.randn(bs, H) * 3
    z[0, 0], z[-1, -1] = 0.0, -0.0
    Z, C = nd(z, dtype, device=device), nd(c, dtype, device=device)
    Z2, C2 = nd(z, dtype, device=device), nd(c, dtype, device=device)
    out = ops.lstm_gates(Z, C)
    assert isinstance(out, ndl.TensorTuple) and len(out) == 2
    ref = gates_composed(Z2, C2)
    for a, b in zip(out, ref):
        assert a.shape == (bs, H) and a.dtype == dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    G = [np.random.randn(bs, H) for _ in range(2)]
    weighted_sum(tuple(out), G, dtype, "nd").backward()
    weighted_sum(ref, G, dtype, "nd").backward()
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == "float32" else dict(rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(Z.grad.numpy(), Z2.grad.numpy(), **tol)
    np.testing.assert_allclose(C.grad.numpy(), C2.grad.numpy(), **tol)


def numeric_grad(f, arrays, k, eps=1e-6):
    """d f / d arrays[k] by central differences (float64)."""
    x = arrays[k]
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        old = x[idx]
        x[idx] = old + eps
        fp = f(*arrays)
        x[idx] = old - eps
        fm = f(*arrays)
        x[idx] = old
        grad[idx] = (fp - fm) / (2 * eps)
    return grad


def test_lstm_gates_finite_differences(gates_path):
    bs, H = 2, 3
    z, c = np.random.randn(bs, 4 * H), np.random.randn(bs, H)
    G1, G2 = np.random.randn(bs, H), np.random.randn(bs, H)

    def f(z, c):
        h2, c2 = ops.lstm_gates(nd(z, "float64", False), nd(c, "float64", False))
        return float((h2.numpy() * G1).sum() + (c2.numpy() * G2).sum())

    Z, C = nd(z, "float64"), nd(c, "float64")
    weighted_sum(tuple(ops.lstm_gates(Z, C)), [G1, G2], "float64", "nd").backward()
    np.testing.assert_allclose(Z.grad.numpy(), numeric_grad(f, [z, c], 0), rtol=1e-6,
                               atol=1e-8)
    np.testing.assert_allclose(C.grad.numpy(), numeric_grad(f, [z, c], 1), rtol=1e-6,
                               atol=1e-8)


def second_order(gates, z, c, G, V):
    """d/d(z, c) of sum(dL/dz * V[0]) + sum(dL/dc * V[1]), L = sum(h*G0) + sum(c'*G1)."""
    Z, C = nd(z, "float64"), nd(c, "float64")
    weighted_sum(tuple(gates(Z, C)), G, "float64", "nd").backward()
    gz, gc_ = Z.grad, C.grad
    weighted_sum((gz, gc_), V, "float64", "nd").backward()
    return Z.grad.numpy(), C.grad.numpy()


def test_lstm_gates_gradient_of_gradient(gates_path):
    bs, H = 2, 3
    z, c = np.random.randn(bs, 4 * H), np.random.randn(bs, H)
    G = [np.random.randn(bs, H) for _ in range(2)]
    V = [np.random.randn(bs, 4 * H), np.random.randn(bs, H)]
    fused = second_order(lambda a, b: ops.lstm_gates(a, b), z, c, G, V)
    comp = second_order(gates_composed, z, c, G, V)
    for a, b in zip(fused, comp):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)

    def first(z, c):  # the first-order gradient, contracted with V
        Z, C = nd(z, "float64"), nd(c, "float64")
        weighted_sum(tuple(ops.lstm_gates(Z, C)), G, "float64", "nd").backward()
        return float((Z.grad.numpy() * V[0]).sum() + (C.grad.numpy() * V[1]).sum())

    np.testing.assert_allclose(fused[0], numeric_grad(first, [z, c], 0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fused[1], numeric_grad(first, [z, c], 1), rtol=1e-5, atol=1e-7)


def test_lstm_gates_bad_shapes_name_them():
    with pytest.raises(ValueError, match=r"\(2, 12\) and \(2, 4\)"):
        ops.lstm_gates(ndl.init.zeros(2, 12), ndl.init.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(3, 8\) and \(2, 2\)"):
        ops.lstm_gates(ndl.init.zeros(3, 8), ndl.init.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(8,\)"):
        ops.lstm_gates(ndl.init.zeros(8), ndl.init.zeros(2))
    x = ndl.Tensor(np.ones((2, 2)))
    with pytest.raises(ValueError):  # a node the op did not make: an error, not a crash
        ops.LSTMGates().gradient(ndl.make_tuple(x, x), ndl.make_tuple(x, x))


# --------------------------------------------------------------------------
# gather_rows / scatter_rows and Embedding
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gather_and_scatter_rows_match_numpy(dtype, device):
    w = np.random.randn(6, 3)
    idx = np.array([[1, 5, 1], [0, 2, 1]])
    W = nd(w, dtype, device=device)
    y = ops.gather_rows(W, nd(idx, dtype, False, device=device))
    assert y.shape == (2, 3, 3)
    np.testing.assert_array_equal(y.numpy(), w.astype(dtype)[idx])
    G = np.random.randn(2, 3, 3)
    (y * nd(G, dtype, False, device=device)).sum().backward()
    ref = np.zeros((6, 3))
    np.add.at(ref, idx, G)
    np.testing.assert_allclose(W.grad.numpy(), ref, rtol=1e-6)
    s = ops.scatter_rows(nd(G, dtype, False, device=device), nd(idx, dtype, False, device=device),
                         (6, 3))
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-6)
    # 1-D tables and index arrays of any rank
    v = np.random.randn(5)
    np.testing.assert_array_equal(
        ops.gather_rows(nd(v, dtype, device=device),
                        nd([4, 0], dtype, False, device=device)).numpy(),
        v.astype(dtype)[[4, 0]])


def test_row_ops_keep_host_indices(device):
    """Note [Inputs read on the host] (op.c): gather_rows and scatter_rows read their
    indices on the host, so an index tensor on a device is copied to the cpu device
    once, when the op is applied, and the node keeps the copy (no gradient, same
    values); on the cpu the node keeps the caller's tensor."""
    w = np.random.randn(6, 3)
    idx = np.array([[1, 5, 1], [0, 2, 1]])
    W = nd(w, "float32", device=device)
    ix = nd(idx, "float32", False, device=device)
    y = ops.gather_rows(W, ix)
    s = ops.scatter_rows(nd(np.ones((2, 3, 3)), "float32", True, device=device), ix, (6, 3))
    for node in (y, s):
        kept = node.inputs[1]
        if device == ndl.cpu():
            assert kept is ix
        else:
            assert kept is not ix and kept.device == ndl.cpu() and not kept.requires_grad
            assert kept.dtype == ix.dtype
        np.testing.assert_array_equal(kept.numpy(), idx)
    G = np.random.randn(2, 3, 3)
    (y * nd(G, "float32", False, device=device)).sum().backward()
    ref = np.zeros((6, 3))
    np.add.at(ref, idx, G)
    np.testing.assert_allclose(W.grad.numpy(), ref, rtol=1e-6)
    assert W.grad.device == W.device and ix.grad is None
    # an index tensor that asks for a gradient gets none, on every device (a constant
    # of the formula, as Embedding leaves it); the table's gradient is unchanged
    it = nd(idx, "float32", True, device=device)
    W2 = nd(w, "float32", device=device)
    iy = ops.gather_rows(W2, it)
    assert iy.inputs[1] is not it and not iy.inputs[1].requires_grad
    (iy * nd(G, "float32", False, device=device)).sum().backward()
    assert it.grad is None
    np.testing.assert_allclose(W2.grad.numpy(), ref, rtol=1e-6)


def test_gather_rows_gradient_of_gradient_and_finite_differences():
    w, idx = np.random.randn(5, 2), np.array([3, 0, 3, 4])
    G = nd(np.random.randn(4, 2), "float64")
    W = nd(w, "float64")
    (ops.gather_rows(W, nd(idx, "float64", False)) * G).sum().backward()
    V = np.random.randn(5, 2)
    (W.grad * nd(V, "float64", False)).sum().backward()  # d/dG of sum(scatter(G) * V)
    np.testing.assert_array_equal(G.grad.numpy(), V[idx])

    g = np.random.randn(4, 2)

    def f(g_):
        return float((ops.scatter_rows(nd(g_, "float64", False), nd(idx, "float64", False),
                                       (5, 2)).numpy() * V).sum())

    Gs = nd(g, "float64")
    (ops.scatter_rows(Gs, nd(idx, "float64", False), (5, 2)) * nd(V, "float64", False)) \
        .sum().backward()
    np.testing.assert_allclose(Gs.grad.numpy(), numeric_grad(f, [g], 0), rtol=1e-7)


def test_gather_and_scatter_rows_reject_bad_indices_and_shapes(device):
    W = ndl.init.ones(4, 2, device=device)
    for bad, err, msg in [([4.0], IndexError, "index 4 is out of range for 4 rows"),
                          ([-1.0], IndexError, "index -1 is out of range"),
                          ([1.5], ValueError, "integers, got 1.5"),
                          ([float("nan")], ValueError, "integers"),
                          ([float("inf")], ValueError, "integers")]:
        with pytest.raises(err, match=msg):
            ops.gather_rows(W, ndl.Tensor(bad, requires_grad=False, device=device))
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 2\)"):
        ops.scatter_rows(ndl.init.ones(3, 2, device=device),
                         ndl.Tensor([0.0, 1.0], device=device), (4, 2))
    with pytest.raises(IndexError, match="out of range for 4 rows"):
        ops.scatter_rows(ndl.init.ones(1, 2, device=device), ndl.Tensor([7.0], device=device),
                         (4, 2))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_embedding_matches_torch_and_one_hot_matmul(dtype, device):
    num, dim, T, bs = 7, 3, 4, 5
    emb = nn.Embedding(num, dim, dtype=dtype, device=device)
    temb = torch.nn.Embedding(num, dim, dtype=TORCH_DT[dtype])
    with torch.no_grad():
        temb.weight.copy_(torch.from_numpy(emb.weight.numpy()))
    x = np.random.randint(0, num, size=(T, bs))
    x[0, :2] = [num - 1, 0]
    y = emb(ndl.Tensor(x, requires_grad=False, device=device))
    yt = temb(torch.from_numpy(x))
    assert y.shape == (T, bs, dim) and y.dtype == dtype
    np.testing.assert_array_equal(y.numpy(), yt.detach().numpy())
    G = np.random.randn(T, bs, dim)
    weighted_sum([y], [G], dtype, "nd").backward()
    weighted_sum([yt], [G], dtype, "th").backward()
    close(emb.weight.grad, temb.weight.grad, TOL[dtype]["bwd"])
    # the contract's formula: one_hot(x) reshaped (T*bs, num) @ weight, reshaped back
    W = nd(emb.weight.numpy(), dtype, device=device)
    oh = ndl.init.one_hot(num, ndl.Tensor(x, requires_grad=False, device=device), dtype=dtype,
                          device=device)
    ref = (oh.reshape((T * bs, num)) @ W).reshape((T, bs, dim))
    np.testing.assert_array_equal(y.numpy(), ref.numpy())
    weighted_sum([ref], [G], dtype, "nd").backward()
    close(emb.weight.grad, W.grad, TOL[dtype]["bwd"])


def test_embedding_passes_its_host_indices(device):
    """Embedding reads x once (its checks) and gives the lookup those values on the cpu
    device, so the op's forward and backward read host memory; x gets no gradient (the
    contract's one_hot(x) is a constant)."""
    emb = nn.Embedding(6, 2, device=device)
    x = ndl.Tensor([[5.0, 0.0, 5.0]], device=device, requires_grad=True)
    y = emb(x)
    idx = y.inputs[1]
    assert idx is not x and idx.device == ndl.cpu() and not idx.requires_grad
    assert idx.dtype == x.dtype
    np.testing.assert_array_equal(idx.numpy(), [[5, 0, 5]])
    y.sum().backward()
    w = emb.weight.numpy()
    np.testing.assert_array_equal(y.numpy(), w[[[5, 0, 5]]])
    want = np.zeros_like(w)
    np.add.at(want, [5, 0, 5], 1.0)
    np.testing.assert_array_equal(emb.weight.grad.numpy(), want)
    assert x.grad is None


def test_embedding_rejects_bad_indices_naming_shapes(device):
    emb = nn.Embedding(10, 4, device=device)
    with pytest.raises(IndexError, match=r"index 10 .*num_embeddings=10.*\(2, 2\)"):
        emb(ndl.Tensor([[1, 10], [2, 3]], requires_grad=False, device=device))
    with pytest.raises(IndexError, match=r"index -1"):
        emb(ndl.Tensor([[-1]], requires_grad=False, device=device))
    with pytest.raises(ValueError, match=r"integers, got 2.5 .*\(1, 2\)"):
        emb(ndl.Tensor([[1.0, 2.5]], requires_grad=False, device=device))


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------

def test_wrong_state_and_input_shapes_are_named():
    X2, X3 = ndl.init.zeros(2, 3), ndl.init.zeros(5, 2, 3)
    cases = [
        (lambda: nn.RNNCell(3, 4)(X2, ndl.init.zeros(2, 5)), r"\(2, 4\), got \(2, 5\)"),
        (lambda: nn.RNNCell(3, 4)(X3), r"\(batch, input_size\).*got shape \(5, 2, 3\)"),
        (lambda: nn.RNNCell(4, 4)(X2), r"input_size=4, got shape \(2, 3\)"),
        (lambda: nn.RNN(3, 4, 2)(X3, ndl.init.zeros(1, 2, 4)), r"\(2, 2, 4\), got \(1, 2, 4\)"),
        (lambda: nn.RNN(3, 4)(X2), r"\(seq_len, batch, input_size\).*got shape \(2, 3\)"),
        (lambda: nn.LSTMCell(3, 4)(X2, (ndl.init.zeros(2, 4), ndl.init.zeros(3, 4))),
         r"cell state c must have shape \(2, 4\), got \(3, 4\)"),
        (lambda: nn.LSTM(3, 4, 2)(X3, (ndl.init.zeros(2, 2, 4), ndl.init.zeros(2, 2, 5))),
         r"c0 must have shape \(2, 2, 4\), got \(2, 2, 5\)"),
        (lambda: nn.LSTM(3, 4)(ndl.init.zeros(5, 2, 7)), r"input_size=3, got shape \(5, 2, 7\)"),
        (lambda: nn.LSTM(3, 4)(ndl.init.zeros(0, 2, 3)), r"empty.*\(0, 2, 3\)"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()
    with pytest.raises(TypeError, match=r"tuple \(h, c\)"):
        nn.LSTM(3, 4)(X3, ndl.init.zeros(1, 2, 4))
    with pytest.raises(TypeError, match=r"tuple \(h, c\)"):
        nn.LSTMCell(3, 4)(X2, ndl.init.zeros(2, 4))


# --------------------------------------------------------------------------
# memory, np mode
# --------------------------------------------------------------------------

def test_repeated_training_steps_leave_no_tensors_behind(device):
    lstm, emb = nn.LSTM(3, 4, num_layers=2, device=device), nn.Embedding(5, 3, device=device)
    x = ndl.Tensor(np.random.randint(0, 5, size=(6, 2)), requires_grad=False, device=device)

    def step():
        out, (h, c) = lstm(emb(x))
        (out.sum() + h.sum() + c.sum()).backward()

    step()
    gc.collect()
    base = ndl.autograd.TENSOR_COUNTER
    for _ in range(3):
        step()
    gc.collect()
    assert ndl.autograd.TENSOR_COUNTER == base


NP_MODE_SCRIPT = textwrap.dedent(r'''
    import numpy as np, torch, needle as ndl, needle.nn as nn
    from needle import ops
    assert ndl.BACKEND == "np"
    np.random.seed(0)
    T, bs, I, H, L = 5, 3, 4, 6, 2
    m = nn.LSTM(I, H, num_layers=L, dtype="float64")
    tm = torch.nn.LSTM(I, H, num_layers=L, dtype=torch.float64)
    r = nn.RNN(I, H, num_layers=L, nonlinearity="relu", dtype="float64")
    tr = torch.nn.RNN(I, H, num_layers=L, nonlinearity="relu", dtype=torch.float64)
    for mod, tmod, cells in ((m, tm, m.lstm_cells), (r, tr, r.rnn_cells)):
        with torch.no_grad():
            for k, c in enumerate(cells):
                for name in ("W_ih", "W_hh"):
                    w = getattr(tmod, {"W_ih": "weight_ih", "W_hh": "weight_hh"}[name] + f"_l{k}")
                    w.copy_(torch.from_numpy(getattr(c, name).numpy().T.copy()))
                getattr(tmod, f"bias_ih_l{k}").copy_(torch.from_numpy(c.bias_ih.numpy()))
                getattr(tmod, f"bias_hh_l{k}").copy_(torch.from_numpy(c.bias_hh.numpy()))
    x = np.random.randn(T, bs, I)
    for mod, tmod in ((m, tm), (r, tr)):
        X, Xt = ndl.Tensor(x), torch.tensor(x, requires_grad=True)
        out, st = mod(X)
        tout, tst = tmod(Xt)
        assert isinstance(out.cached_data, np.ndarray) and out.dtype == np.float64
        np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=1e-10, atol=1e-12)
        G = np.random.randn(T, bs, H)
        (out * ndl.Tensor(G)).sum().backward()
        (tout * torch.from_numpy(G)).sum().backward()
        np.testing.assert_allclose(X.grad.numpy(), Xt.grad.numpy(), rtol=1e-9, atol=1e-11)
        cells = getattr(mod, "lstm_cells", None) or mod.rnn_cells
        for k, c in enumerate(cells):
            np.testing.assert_allclose(c.W_hh.grad.numpy(),
                                       getattr(tmod, f"weight_hh_l{k}").grad.numpy().T,
                                       rtol=1e-9, atol=1e-11)
    # the fused op is the composition, in float64
    z, c = np.random.randn(2, 12), np.random.randn(2, 3)
    h2, c2 = ops.lstm_gates(ndl.Tensor(z), ndl.Tensor(c))
    sg = lambda v: 1 / (1 + np.exp(-v))
    cr = sg(z[:, 3:6]) * c + sg(z[:, :3]) * np.tanh(z[:, 6:9])
    np.testing.assert_allclose(c2.numpy(), cr, rtol=1e-12)
    np.testing.assert_allclose(h2.numpy(), sg(z[:, 9:]) * np.tanh(cr), rtol=1e-12)
    # Embedding: lookup and scatter-add gradient
    emb = nn.Embedding(5, 2, dtype="float64")
    idx = np.array([[1, 4], [1, 0]])
    y = emb(ndl.Tensor(idx))
    np.testing.assert_array_equal(y.numpy(), emb.weight.numpy()[idx])
    y.sum().backward()
    np.testing.assert_array_equal(emb.weight.grad.numpy()[:, 0], [1, 2, 0, 0, 1])
    try:
        emb(ndl.Tensor(np.array([[5]])))
    except IndexError as e:
        assert "out of range" in str(e)
    else:
        raise AssertionError("no IndexError")
    print("NP MODE OK")
''')


def test_np_mode():
    env = dict(os.environ, NEEDLE_BACKEND="np")
    r = subprocess.run([sys.executable, "-c", NP_MODE_SCRIPT], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "NP MODE OK" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


# --------------------------------------------------------------------------
# what a step keeps: split views, the step's one-node affine
# --------------------------------------------------------------------------

def _ptr(t):
    return t.cached_data._handle.ptr()


def test_split_returns_contiguous_slices_as_views():
    """Note [Split keeps compact slices as views] (ops_tuple.c): axis-0 slices of
    a compact array share its buffer; other slices are copies; values and
    gradients are those of numpy either way."""
    x = np.random.randn(4, 3, 5)
    X = nd(x, "float64")
    parts = ops.split(X, 0)
    for t, p in enumerate(parts):
        assert _ptr(p) == _ptr(X)
        np.testing.assert_array_equal(p.numpy(), x[t])
    cols = ops.split(X, 1)
    for j, p in enumerate(cols):
        assert _ptr(p) != _ptr(X)
        np.testing.assert_array_equal(p.numpy(), x[:, j])
    G = np.random.randn(3, 4, 5)
    (ops.stack(list(parts), 1) * nd(G, "float64", False)).sum().backward()
    np.testing.assert_array_equal(X.grad.numpy(), G.transpose(1, 0, 2))


def test_split_steps_pieces_share_the_input_buffer():
    X = nd(np.random.randn(12, 2, 3), "float32")
    assert {_ptr(s) for s in _split_steps(X)} == {_ptr(X)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_linear_with_a_full_bias_matches_torch(dtype, device):
    """ops.linear(x, w, b) with b (N, out), as a step adds h @ W_hh to its slice
    of X @ W_ih: values and all three gradients against torch."""
    x, w, b, G = (np.random.randn(*s) for s in [(5, 3), (3, 4), (5, 4), (5, 4)])
    X, W, B = (ndl.Tensor(a, dtype=dtype, device=device) for a in (x, w, b))
    y = ops.linear(X, W, B)
    (y * ndl.Tensor(G, dtype=dtype, device=device, requires_grad=False)).sum().backward()
    Xt, Wt, Bt = (th(a, dtype) for a in (x, w, b))
    yt = Xt @ Wt + Bt
    (yt * th(G, dtype, False)).sum().backward()
    tol = TOL[dtype]["bwd"]
    close(y, yt, tol)
    for a, at in ((X, Xt), (W, Wt), (B, Bt)):
        close(a.grad, at.grad, tol)


def test_linear_with_a_full_bias_finite_differences():
    x, w, b = np.random.randn(3, 2), np.random.randn(2, 4), np.random.randn(3, 4)
    G = np.random.randn(3, 4)

    def f(x, w, b):
        return float(((x @ w + b) * G).sum())
    X, W, B = nd(x, "float64"), nd(w, "float64"), nd(b, "float64")
    (ops.linear(X, W, B) * nd(G, "float64", False)).sum().backward()
    for k, T in enumerate((X, W, B)):
        np.testing.assert_allclose(T.grad.numpy(), numeric_grad(f, [x, w, b], k), rtol=1e-6,
                                   atol=1e-8)


def test_linear_rejects_a_bias_of_other_rows():
    with pytest.raises(ValueError, match=r"Linear.*\(5, 3\).*\(3, 4\).*\(2, 4\)"):
        ops.linear(nd(np.ones((5, 3)), "float32"), nd(np.ones((3, 4)), "float32"),
                   nd(np.ones((2, 4)), "float32"))
