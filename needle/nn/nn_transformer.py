"""needle.nn transformer modules (API.md 6.6): MultiHeadAttention, AttentionLayer,
TransformerLayer, Transformer.

Construction order is the order of the random draws, and the dropout draws
happen in the order the contract lists, so seeded models reproduce the
course's numbers. What runs differs from the contract's composition only
where the numbers agree to float32 rounding:

- `MultiHeadAttention.matmul(a, b_t)` is one batched matmul `a @ b_t^T` on
  the packed C kernel (the transpose is a strided view, not a copy), not a
  broadcast product over a 5-D (..., T, S, D) intermediate and a sum;
- `MultiHeadAttention.softmax` is one fused C op over the last axis
  (`ops.softmax`), whose gradient is one fused C op (`ops.softmax_grad`);
- `forward` runs q @ k^T, the scaling, the causal mask and the softmax as one
  fused C op (`ops.attention_probs`: the batched matmul, then the same
  per-element arithmetic as the contract's nodes; the graph stores the
  (B, H, T, S) probabilities only, where the contract's four nodes store four
  such arrays), and multiplies `probs @ v`, which is `matmul(probs, transpose(v))`.

>>> import numpy as np, needle as ndl
>>> model = ndl.nn.Transformer(16, 32, 2, num_head=2, dim_head=8, sequence_len=10)
>>> out, h = model(ndl.Tensor(np.zeros((5, 3, 16), "float32")))
>>> out.shape
(5, 3, 16)
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from needle import init, ops
from needle.autograd import Tensor

from .nn_basic import Dropout, LayerNorm1d, Linear, Module, ReLU, Sequential
from .nn_sequence import Embedding, _check_input

__all__ = ["MultiHeadAttention", "AttentionLayer", "TransformerLayer", "Transformer"]

_F32_MAX = float(np.finfo(np.float32).max)


def _shape_error(name: str, what: str, *shapes) -> ValueError:
    return ValueError(f"{name}: {what}, got " + " and ".join(str(tuple(s)) for s in shapes))


def _layer_norm(norm: LayerNorm1d, x: Tensor) -> Tensor:
    """norm(x), LayerNorm1d's formula with its weight, bias and eps, as one node that
    stores only its output (ops.layer_norm, Note [Fused LayerNorm] in ops_layernorm.c)."""
    return ops.layer_norm(x, norm.weight, norm.bias, norm.eps)


class MultiHeadAttention(Module):
    """Scaled dot-product attention over (B, H, T, D) queries, keys and values.

    forward(q, k, v) -> (result (B, H, T, D), probs (B, H, T, S)); probs are
    returned after dropout. EXT: `mask`, an additive mask (a Tensor or array)
    broadcastable to (B, H, T, S), added after the causal mask.
    """

    def __init__(self, *, dropout=0.0, causal=False, device=None, dtype="float32"):
        super().__init__()
        self.device = device
        self.dtype = dtype
        self.causal = causal
        self.dropout = Dropout(dropout)

    def create_causal_mask(self, i: int, j: int, device):
        """(1, 1, i, j): -(largest float32) where column > row + (j - i), else 0."""
        mask = -_F32_MAX * np.triu(np.ones((1, 1, i, j), dtype=np.float32), j - i + 1)
        return Tensor(mask.astype(np.float32), device=device, dtype="float32",
                      requires_grad=False).realize_cached_data()

    def matmul(self, a: Tensor, b_transpose: Tensor) -> Tensor:
        """Batched a @ b_transpose^T: a (..., T, D), b_transpose (..., S, D) -> (..., T, S)."""
        n = len(b_transpose.shape)
        return a @ ops.transpose(b_transpose, (n - 2, n - 1))

    def softmax(self, logit: Tensor) -> Tensor:
        """Softmax over the last axis, one fused op."""
        return ops.softmax(logit)

    def forward(self, q: Tensor, k: Tensor, v: Tensor,
                mask=None) -> Tuple[Tensor, Tensor]:
        name = type(self).__name__
        for t, what in ((q, "q"), (k, "k"), (v, "v")):
            _check_input(name, t, "(batch, heads, length, dim)", 4, what=what)
        B, H, T, D = q.shape
        S = k.shape[2]
        if k.shape[:2] != (B, H) or k.shape[3] != D or v.shape[:3] != (B, H, S):
            raise _shape_error(name, "q (B, H, T, D), k (B, H, S, D) and v (B, H, S, Dv) "
                               "must agree", q.shape, k.shape, v.shape)
        if mask is None:
            # NOTE: = softmax(matmul(q, k) / sqrt(D) + causal mask), the contract's numbers
            probs = ops.attention_probs(q, k, math.sqrt(D), 1.0 if self.causal else 0.0)
        else:
            logits = self.matmul(q, k) / math.sqrt(D)
            if self.causal:
                m = Tensor(self.create_causal_mask(T, S, q.device), device=q.device,
                           dtype=logits.dtype, requires_grad=False)
                logits = logits + m.broadcast_to(logits.shape)
            probs = self.softmax(logits + _broadcast_mask(name, mask, logits))
        probs = self.dropout(probs)
        return probs @ v, probs


def _broadcast_mask(name: str, mask, logits: Tensor) -> Tensor:
    if not isinstance(mask, Tensor):
        mask = Tensor(mask, device=logits.device, dtype=logits.dtype, requires_grad=False)
    shape, target = tuple(mask.shape), tuple(logits.shape)
    padded = (1,) * (len(target) - len(shape)) + shape
    if len(shape) > len(target) or any(m not in (1, t) for m, t in zip(padded, target)):
        raise _shape_error(name, f"the mask must broadcast to the logits {target}", shape)
    return mask.reshape(padded).broadcast_to(target)


class AttentionLayer(Module):
    """Pre-norm multi-head attention with input and output projections (no biases)."""

    def __init__(self, q_features: int, num_head: int, dim_head: int, *,
                 k_features: Optional[int] = None, v_features: Optional[int] = None,
                 out_features: Optional[int] = None, dropout=0.0, causal=True, device=None,
                 dtype="float32"):
        super().__init__()
        if num_head < 1 or dim_head < 1:
            raise ValueError(f"AttentionLayer: num_head and dim_head must be >= 1, got "
                             f"num_head={num_head}, dim_head={dim_head}")
        k_features = q_features if k_features is None else k_features
        v_features = q_features if v_features is None else v_features
        out_features = q_features if out_features is None else out_features
        self.device = device
        self.dtype = dtype
        self.num_head = num_head
        self.dim_head = dim_head
        self.q_features = q_features
        self.k_features = k_features
        self.v_features = v_features
        self.out_features = out_features
        kw = dict(device=device, dtype=dtype)
        inner = num_head * dim_head
        self.prenorm_q = LayerNorm1d(q_features, **kw)
        self.prenorm_k = LayerNorm1d(k_features, **kw)
        self.prenorm_v = LayerNorm1d(v_features, **kw)
        self.q_projection = Linear(q_features, inner, bias=False, **kw)
        self.k_projection = Linear(k_features, inner, bias=False, **kw)
        self.v_projection = Linear(v_features, inner, bias=False, **kw)
        self.attn = MultiHeadAttention(dropout=dropout, causal=causal, **kw)
        self.out_projection = Linear(inner, out_features, bias=False, **kw)

    def _heads(self, x: Tensor, norm: LayerNorm1d, proj: Linear) -> Tensor:
        B, T, F = x.shape
        y = proj(_layer_norm(norm, x.reshape((B * T, F))))
        return y.reshape((B, T, self.num_head, self.dim_head)).transpose((1, 2))

    def forward(self, q: Tensor, k: Optional[Tensor] = None, v: Optional[Tensor] = None,
                mask=None) -> Tensor:
        k = q if k is None else k
        v = q if v is None else v
        name = type(self).__name__
        for t, f, what in ((q, self.q_features, "q"), (k, self.k_features, "k"),
                           (v, self.v_features, "v")):
            _check_input(name, t, f"(batch, length, {what}_features)", 3, f, what=what,
                         feature_name=f"{what}_features")
        if k.shape[:2] != v.shape[:2] or k.shape[0] != q.shape[0]:
            raise _shape_error(name, "q, k and v must share the batch size, k and v the "
                               "length", q.shape, k.shape, v.shape)
        B, T, _ = q.shape
        qh = self._heads(q, self.prenorm_q, self.q_projection)
        kh = self._heads(k, self.prenorm_k, self.k_projection)
        vh = self._heads(v, self.prenorm_v, self.v_projection)
        result, _ = self.attn(qh, kh, vh, mask=mask)
        result = result.transpose((1, 2)).reshape((B * T, self.num_head * self.dim_head))
        return self.out_projection(result).reshape((B, T, self.out_features))


class TransformerLayer(Module):
    """x + Dropout(Attention(x)), then x + Dropout(MLP(LayerNorm(x)))."""

    def __init__(self, q_features: int, num_head: int, dim_head: int, hidden_size: int, *,
                 dropout=0.0, causal=True, device=None, dtype="float32"):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.device = device
        self.dtype = dtype
        self.q_features = q_features
        self.attention = AttentionLayer(q_features, num_head, dim_head, dropout=dropout,
                                        causal=causal, **kw)
        self.linear1 = Linear(q_features, hidden_size, **kw)
        self.linear2 = Linear(hidden_size, q_features, **kw)
        self.layernorm = LayerNorm1d(q_features, **kw)
        self.relu = ReLU()
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(type(self).__name__, x, "(batch, length, q_features)", 3, self.q_features,
                     what="x", feature_name="q_features")
        B, T, F = x.shape
        x = x + self.dropout(self.attention(x))
        y = self.linear1(_layer_norm(self.layernorm, x.reshape((B * T, F))))
        y = self.dropout(self.linear2(self.dropout(self.relu(y))))
        return x + y.reshape((B, T, F))


class Transformer(Module):
    """A learned positional embedding, then num_layers TransformerLayers (no final norm).

    forward(x (T, B, F), h=None) -> (out (T, B, F), zeros_like(out)); with
    batch_first the input and output are (B, T, F).
    """

    def __init__(self, embedding_size: int, hidden_size: int, num_layers: int, *,
                 num_head: int = 8, dim_head: int = 32, dropout=0.0, causal=True, device=None,
                 dtype="float32", batch_first=False, sequence_len=2048):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.device = device
        self.dtype = dtype
        self.embedding_size = embedding_size
        self.batch_first = batch_first
        self.sequence_len = sequence_len
        self.positional_embedding = Embedding(sequence_len, embedding_size, **kw)
        self.layers = Sequential(*[
            TransformerLayer(embedding_size, num_head, dim_head, hidden_size, dropout=dropout,
                             causal=causal, **kw) for _ in range(num_layers)])

    def forward(self, x: Tensor, h=None) -> Tuple[Tensor, Tensor]:
        name = type(self).__name__
        layout = "(batch, length, features)" if self.batch_first else \
            "(length, batch, features)"
        _check_input(name, x, layout, 3, self.embedding_size, what="x", feature_name="features")
        if x.shape[1 if self.batch_first else 0] > self.sequence_len:
            raise _shape_error(name, f"the sequence is longer than sequence_len="
                               f"{self.sequence_len} (x is {layout})", x.shape)
        if not self.batch_first:
            x = ops.transpose(x, (0, 1))
        B, T, _ = x.shape
        ids = np.broadcast_to(np.arange(T, dtype=np.float32).reshape((T, 1)), (T, B))
        ids = Tensor(np.ascontiguousarray(ids), device=x.device, requires_grad=False)
        x = x + ops.transpose(self.positional_embedding(ids), (0, 1))
        x = self.layers(x)
        if not self.batch_first:
            x = ops.transpose(x, (0, 1))
        return x, init.zeros_like(x)
