"""needle.nn sequence modules (API.md 6.5): RNNCell, RNN, LSTMCell, LSTM, Embedding.

Weights are stored input-major, the transpose of PyTorch's layout: W_ih is
(input_size, G*H) and W_hh (H, G*H), G = 1 for an RNN and 4 for an LSTM
(gate blocks i, f, g, o). Construction draws W_ih, W_hh, bias_ih, bias_hh
in that order, each uniform in [-1/sqrt(H), 1/sqrt(H)], layer by layer.
States and outputs are plain Python tuples of Tensors.

How a layer runs T steps (the numbers are those of the per-step formula):
X @ W_ih + (b_ih + b_hh) is one matmul and one add for all steps, cut into
steps once (the slices are views); each step adds h @ W_hh (ops.linear, one
node: h @ W_hh + that step's slice), then applies tanh/relu (RNN) or the fused gate op
`ops.lstm_gates` (LSTM: sigmoid/tanh of the four blocks, c' = f*c + i*g,
h' = o*tanh(c'), one graph node); the outputs are stacked once at the end.

>>> import numpy as np, needle as ndl
>>> lstm = ndl.nn.LSTM(4, 8, num_layers=2)
>>> out, (h, c) = lstm(ndl.Tensor(np.zeros((5, 3, 4))))
>>> out.shape, h.shape, c.shape
((5, 3, 8), (2, 3, 8), (2, 3, 8))
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from needle import init, ops
from needle.autograd import Tensor
from needle.backend_selection import cpu

from .nn_basic import Module, Parameter

__all__ = ["RNNCell", "RNN", "LSTMCell", "LSTM", "Embedding"]

_NONLINEARITIES = ("tanh", "relu")


def _uniform(shape: Sequence[int], k: float, device, dtype) -> Parameter:
    return Parameter(init.rand(*shape, low=-k, high=k, device=device, dtype=dtype,
                               requires_grad=True))


def _check_input(name: str, X: Tensor, layout: str, ndim: int, features: Optional[int] = None,
                 *, what: str = "the input", feature_name: str = "input_size",
                 nonempty: bool = False) -> None:
    """ValueError naming the module, what X is, its layout and its shape unless X has
    ndim dimensions, `features` along the last axis and (nonempty) a first axis > 0.
    The sequence and transformer modules (nn_transformer.py) check their inputs here."""
    shape = tuple(X.shape)
    if len(shape) != ndim:
        raise ValueError(f"{name}: {what} must be {layout}, a {ndim}-D tensor, "
                         f"got shape {shape}")
    if features is not None and shape[-1] != features:
        raise ValueError(f"{name}: {what} must be {layout} with {feature_name}={features}, "
                         f"got shape {shape}")
    if nonempty and shape[0] == 0:
        raise ValueError(f"{name}: the sequence is empty (seq_len 0), got shape {shape}")


_CELL_IN, _SEQ_IN = "(batch, input_size)", "(seq_len, batch, input_size)"


def _check_state(name: str, what: str, h, shape: Tuple[int, ...]) -> None:
    if not isinstance(h, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor of shape {shape}, "
                        f"got {type(h).__name__}")
    if tuple(h.shape) != shape:
        raise ValueError(f"{name}: {what} must have shape {shape}, got {tuple(h.shape)}")


def _lstm_state(name: str, h) -> Tuple[Tensor, Tensor]:
    if isinstance(h, Tensor) or not isinstance(h, (tuple, list)) or len(h) != 2:
        raise TypeError(f"{name}: the state must be a tuple (h, c) of two Tensors, "
                        f"got {type(h).__name__}")
    return h[0], h[1]


def _smallest_factor(n: int) -> int:
    for p in range(2, math.isqrt(n) + 1):
        if n % p == 0:
            return p
    return n


def _split_steps(x: Tensor) -> List[Tensor]:
    """The T slices x[t] of x (T, ...), as T Tensors.

    NOTE: the adjoint of a Split node is the sum of one full tuple per
    consumer (TupleGetItem's gradient is zeros but for its own entry), so one
    split into T pieces costs O(T^2) slice-sized additions in the backward.
    Splitting in levels along the factors of T (40 = 2*2*2*5: 2, then 2, ...)
    brings that to O(T * sum of factors). x is reshaped once to (2, 2, 2, 5,
    ...) and each level splits axis 0, so every piece is a contiguous slice,
    which Split returns as a view (Note [Split keeps compact slices as views],
    ops_tuple.c): the levels hold no copies of x.
    """
    T, rest = x.shape[0], tuple(x.shape[1:])
    factors, n = [], T
    while n > 1:
        p = _smallest_factor(n)
        factors.append(p)
        n //= p
    if len(factors) <= 1:
        return list(ops.split(x, 0))
    pieces = [x.reshape(tuple(factors) + rest)]
    for _ in factors:
        pieces = [s for piece in pieces for s in ops.split(piece, 0)]
    return pieces


def _bias(cell) -> Optional[Tensor]:
    """bias_ih + bias_hh (either alone when the other is None; None when both are).

    NOTE: a step adds the two biases to X @ W_ih first, then h @ W_hh: the
    formula's sum in another order. So the whole sequence's input term
    X @ W_ih + bias is one node, and a step is one add of h @ W_hh, not three:
    two (bs, G*H) arrays fewer kept for the backward per step (in the LSTM
    language model of bench_seq_step, 10 MB per layer). Cells and layers add
    in this same order, so a layer gives its cells' numbers bit for bit.
    """
    if cell.bias_ih is None or cell.bias_hh is None:
        return cell.bias_ih if cell.bias_hh is None else cell.bias_hh
    return cell.bias_ih + cell.bias_hh


def _affine(X: Tensor, W: Tensor, b: Optional[Tensor]) -> Tensor:
    """X @ W + b (b (n,) or (rows, n), or None): one node (ops.linear), which
    keeps only its result for the backward, not X @ W too."""
    return X @ W if b is None else ops.linear(X, W, b)


def _input_steps(X: Tensor, W_ih: Tensor, bias: Optional[Tensor]) -> List[Tensor]:
    """[X[t] @ W_ih + bias for t in range(T)] for X (T, bs, in).

    One (T*bs, in) @ (in, n) matmul: its rows are the per-step products bit
    for bit. NOTE: a one-row product (bs == 1) takes the matrix-vector path
    of the matmul kernel, which rounds differently, so that case multiplies
    step by step as the formula does.
    """
    T, bs, n_in = X.shape
    n = W_ih.shape[1]
    if bs == 1:
        return [_affine(x, W_ih, bias) for x in _split_steps(X)]
    xw = _affine(X.reshape((T * bs, n_in)), W_ih, bias)
    return _split_steps(xw.reshape((T, bs, n)))


def _state_steps(h: Optional[Tensor], name: str, what: str, L: int, bs: int, H: int,
                 like: Tensor) -> List[Tensor]:
    """The L layer states of h (L, bs, H), zeros when h is None."""
    if h is None:
        zero = init.zeros(bs, H, device=like.device, dtype=like.dtype)
        return [zero] * L
    _check_state(name, what, h, (L, bs, H))
    return list(ops.split(h, 0))


class RNNCell(Module):
    """One Elman RNN step: h' = act(X @ W_ih + bias_ih + h @ W_hh + bias_hh).

    >>> import needle as ndl
    >>> cell = ndl.nn.RNNCell(3, 5)
    >>> cell(ndl.init.ones(2, 3)).shape
    (2, 5)
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", device=None, dtype="float32"):
        super().__init__()
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', "
                             f"got {nonlinearity!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.nonlinearity = nonlinearity
        self.device = device
        self.dtype = dtype
        k = 1.0 / math.sqrt(hidden_size)
        self.W_ih = _uniform((input_size, hidden_size), k, device, dtype)
        self.W_hh = _uniform((hidden_size, hidden_size), k, device, dtype)
        self.bias_ih = _uniform((hidden_size,), k, device, dtype) if bias else None
        self.bias_hh = _uniform((hidden_size,), k, device, dtype) if bias else None

    def _act(self, z: Tensor) -> Tensor:
        return ops.tanh(z) if self.nonlinearity == "tanh" else ops.relu(z)

    def forward(self, X: Tensor, h: Optional[Tensor] = None) -> Tensor:
        """X (bs, input_size), h (bs, hidden_size) or None (zeros) -> h' (bs, hidden_size)."""
        _check_input("RNNCell", X, _CELL_IN, 2, self.input_size)
        bs, H = X.shape[0], self.hidden_size
        if h is None:
            h = init.zeros(bs, H, device=X.device, dtype=X.dtype)
        _check_state("RNNCell", "the hidden state h", h, (bs, H))
        return self._act(_affine(h, self.W_hh, _affine(X, self.W_ih, _bias(self))))


class RNN(Module):
    """A multi-layer Elman RNN over a (seq_len, batch, input_size) sequence.

    >>> import needle as ndl
    >>> out, h_n = ndl.nn.RNN(3, 5, num_layers=2)(ndl.init.ones(4, 2, 3))
    >>> out.shape, h_n.shape
    ((4, 2, 5), (2, 2, 5))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, nonlinearity: str = "tanh", device=None, dtype="float32"):
        super().__init__()
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.nonlinearity = nonlinearity
        self.device = device
        self.dtype = dtype
        self.rnn_cells = [RNNCell(input_size if k == 0 else hidden_size, hidden_size, bias=bias,
                                  nonlinearity=nonlinearity, device=device, dtype=dtype)
                          for k in range(num_layers)]

    def forward(self, X: Tensor, h0: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """X (T, bs, input_size), h0 (num_layers, bs, H) or None ->
        (output (T, bs, H): the last layer's states, h_n (num_layers, bs, H))."""
        _check_input("RNN", X, _SEQ_IN, 3, self.input_size, nonempty=True)
        T, bs, _ = X.shape
        H = self.hidden_size
        states = _state_steps(h0, "RNN", "the initial state h0", self.num_layers, bs, H, X)
        layer_in, h_n = X, []
        for cell, h in zip(self.rnn_cells, states):
            outs = []
            for xw in _input_steps(layer_in, cell.W_ih, _bias(cell)):
                h = cell._act(_affine(h, cell.W_hh, xw))
                outs.append(h)
            h_n.append(h)
            layer_in = ops.stack(outs, 0)
        return layer_in, ops.stack(h_n, 0)


class LSTMCell(Module):
    """One LSTM step: z = X @ W_ih + bias_ih + h @ W_hh + bias_hh, blocks i, f, g, o;
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g), h' = sigmoid(o) * tanh(c').

    >>> import needle as ndl
    >>> h, c = ndl.nn.LSTMCell(3, 5)(ndl.init.ones(2, 3))
    >>> h.shape, c.shape
    ((2, 5), (2, 5))
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype="float32"):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.device = device
        self.dtype = dtype
        k = 1.0 / math.sqrt(hidden_size)
        self.W_ih = _uniform((input_size, 4 * hidden_size), k, device, dtype)
        self.W_hh = _uniform((hidden_size, 4 * hidden_size), k, device, dtype)
        self.bias_ih = _uniform((4 * hidden_size,), k, device, dtype) if bias else None
        self.bias_hh = _uniform((4 * hidden_size,), k, device, dtype) if bias else None

    def forward(self, X: Tensor, h=None) -> Tuple[Tensor, Tensor]:
        """X (bs, input_size), h None (zeros) or a tuple (h0, c0) each (bs, H) -> (h', c')."""
        _check_input("LSTMCell", X, _CELL_IN, 2, self.input_size)
        bs, H = X.shape[0], self.hidden_size
        if h is None:
            h0 = c0 = init.zeros(bs, H, device=X.device, dtype=X.dtype)
        else:
            h0, c0 = _lstm_state("LSTMCell", h)
            _check_state("LSTMCell", "the hidden state h", h0, (bs, H))
            _check_state("LSTMCell", "the cell state c", c0, (bs, H))
        z = _affine(h0, self.W_hh, _affine(X, self.W_ih, _bias(self)))
        hc = ops.lstm_gates(z, c0)
        return hc[0], hc[1]


class LSTM(Module):
    """A multi-layer LSTM over a (seq_len, batch, input_size) sequence.

    >>> import needle as ndl
    >>> out, (h_n, c_n) = ndl.nn.LSTM(3, 5)(ndl.init.ones(4, 2, 3))
    >>> out.shape, h_n.shape
    ((4, 2, 5), (1, 2, 5))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, device=None, dtype="float32"):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.device = device
        self.dtype = dtype
        self.lstm_cells = [LSTMCell(input_size if k == 0 else hidden_size, hidden_size,
                                    bias=bias, device=device, dtype=dtype)
                           for k in range(num_layers)]

    def forward(self, X: Tensor, h=None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """X (T, bs, input_size), h None or (h0, c0) each (num_layers, bs, H) ->
        (output (T, bs, H), (h_n, c_n) each (num_layers, bs, H))."""
        _check_input("LSTM", X, _SEQ_IN, 3, self.input_size, nonempty=True)
        T, bs, _ = X.shape
        L, H = self.num_layers, self.hidden_size
        h0 = c0 = None
        if h is not None:
            h0, c0 = _lstm_state("LSTM", h)
            _check_state("LSTM", "the initial hidden state h0", h0, (L, bs, H))
            _check_state("LSTM", "the initial cell state c0", c0, (L, bs, H))
        hs = _state_steps(h0, "LSTM", "h0", L, bs, H, X)
        cs = _state_steps(c0, "LSTM", "c0", L, bs, H, X)
        layer_in, h_n, c_n = X, [], []
        for cell, h_t, c_t in zip(self.lstm_cells, hs, cs):
            outs = []
            for xw in _input_steps(layer_in, cell.W_ih, _bias(cell)):
                hc = ops.lstm_gates(_affine(h_t, cell.W_hh, xw), c_t)
                h_t, c_t = hc[0], hc[1]
                outs.append(h_t)
            h_n.append(h_t)
            c_n.append(c_t)
            layer_in = ops.stack(outs, 0)
        return layer_in, (ops.stack(h_n, 0), ops.stack(c_n, 0))


class Embedding(Module):
    """Rows of `weight` (num_embeddings, embedding_dim) picked by integer indices.

    forward(x (T, bs)) is one_hot(x) @ weight reshaped (T, bs, dim), computed
    as a row lookup (ops.gather_rows): the same values, and the gradient
    one_hot^T @ g as a scatter-add of rows (ops.scatter_rows).

    >>> import needle as ndl
    >>> emb = ndl.nn.Embedding(10, 4)
    >>> emb(ndl.Tensor([[1, 2, 3]], requires_grad=False)).shape
    (1, 3, 4)
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype="float32"):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.device = device
        self.dtype = dtype
        self.weight = Parameter(init.randn(num_embeddings, embedding_dim, device=device,
                                           dtype=dtype, requires_grad=True))

    def forward(self, x: Tensor) -> Tensor:
        """x (T, bs) of indices in [0, num_embeddings) -> (T, bs, embedding_dim)."""
        if not isinstance(x, Tensor):
            x = Tensor(x, device=self.weight.device, requires_grad=False)
        idx = np.asarray(x.numpy())
        n = self.num_embeddings
        if idx.size:
            bad = idx[(idx != np.floor(idx)) | ~np.isfinite(idx)] \
                if idx.dtype.kind == "f" else idx[:0]
            if bad.size:
                raise ValueError(f"Embedding: indices must be integers, got {bad.flat[0].item()} "
                                 f"in x of shape {tuple(x.shape)}")
            out = idx[(idx < 0) | (idx >= n)]
            if out.size:
                raise IndexError(f"Embedding: index {int(out.flat[0])} is out of range for "
                                 f"num_embeddings={n} (x of shape {tuple(x.shape)})")
        # The op reads its indices on the host (Note [Inputs read on the host], op.c):
        # give it the values just read, on the cpu device, so it copies nothing.
        # x gets no gradient, as in the contract's one_hot(x) @ weight.
        return ops.gather_rows(self.weight, Tensor(idx, device=cpu(), dtype=x.dtype,
                                                   requires_grad=False))
