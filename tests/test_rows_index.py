"""The take_rows / scatter_add_rows backend slots (backend.h) behind gather_rows /
scatter_rows (Embedding's lookup and its gradient, Note [Rows by index], ops_rnn.c).

Each case runs with the slots on and off (`_C._skip_optional_slots`: the composite path
of one copy, or one add and one copy, per index); the two must agree bit for bit (the
scatter adds rows in increasing k order either way), and both must equal NumPy
(np.take / np.add.at, which also add in index order). The cuda cases run the CUDA
kernels (cuda_rows_index.cu) against the same host references.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import needle as ndl
import needle.nn as nn
from needle import _C, ops

DTYPES = ["float32", "float64"]
BITS = {"float32": np.uint32, "float64": np.uint64}


def nd(a, dtype, requires_grad=False, device=None):
    return ndl.Tensor(np.asarray(a), dtype=dtype, requires_grad=requires_grad, device=device)


def slots(on):
    """Context: the optional slots on (True) or switched off (False)."""
    class _Ctx:
        def __enter__(self):
            self.prev = _C._skip_optional_slots(not on)

        def __exit__(self, *exc):
            _C._skip_optional_slots(self.prev)
    return _Ctx()


def same_bits(a, b, dtype):
    a, b = np.ascontiguousarray(a, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.view(BITS[dtype]), b.view(BITS[dtype]))


def gather(w, idx, dtype, device):
    return ops.gather_rows(nd(w, dtype, device=device), nd(idx, dtype)).numpy()


def scatter(g, idx, shape, dtype, device):
    return ops.scatter_rows(nd(g, dtype, device=device), nd(idx, dtype), shape).numpy()


# (table shape, index shape, number of distinct rows the indices draw from)
CASES = [
    ((6, 3), (2, 3), 6),          # Embedding-like, some repeats
    ((5, 1), (40,), 2),           # row = 1, many repeats of two rows
    ((7,), (9,), 3),              # a 1-D table: rows of one element
    ((4, 2, 3), (3, 2), 4),       # a 3-D table: rows of 6 elements
    ((9, 4), (0,), 9),            # n = 0: an empty lookup, a zero gradient
    ((3, 0), (5,), 3),            # row = 0
    ((50, 5000), (60,), 7),       # big rows: the cpu scatter splits over columns
    ((1000, 256), (40, 20), 1000),  # a language model step's shape (T * bs = 800)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tshape, ishape, draw", CASES)
def test_slots_match_composite_and_numpy_bit_for_bit(tshape, ishape, draw, dtype, device):
    rng = np.random.default_rng(7)
    w = rng.standard_normal(tshape).astype(dtype)
    idx = rng.integers(0, draw, size=ishape)
    g = rng.standard_normal(ishape + tshape[1:]).astype(dtype) * 1e3
    g.reshape(-1)[::3] *= 1e-6  # mixed magnitudes: a changed sum order changes bits
    with slots(True):
        take_s, scat_s = gather(w, idx, dtype, device), scatter(g, idx, tshape, dtype, device)
    with slots(False):
        take_c, scat_c = gather(w, idx, dtype, device), scatter(g, idx, tshape, dtype, device)
    same_bits(take_s, take_c, dtype)
    same_bits(scat_s, scat_c, dtype)
    same_bits(take_s, np.take(w, idx, axis=0), dtype)
    ref = np.zeros(tshape, dtype=dtype)
    np.add.at(ref, idx, g)
    same_bits(scat_s, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scatter_starts_from_positive_zero(dtype, device):
    """0 + (-0) is +0: the slot's zeroed output keeps the composite path's sign bits."""
    g = np.full((3, 2), -0.0, dtype=dtype)
    idx = np.array([2, 0, 2])
    with slots(True):
        s = scatter(g, idx, (4, 2), dtype, device)
    with slots(False):
        c = scatter(g, idx, (4, 2), dtype, device)
    same_bits(s, c, dtype)
    assert not np.signbit(s).any()


@pytest.mark.parametrize("on", [True, False], ids=["slot", "composite"])
def test_views_are_compacted_first(on, device):
    """A transposed table and a broadcast gradient reach the slots as compact copies."""
    w = np.arange(12.0).reshape(3, 4)
    idx = np.array([3, 0, 3])
    with slots(on):
        W = nd(w, "float64", requires_grad=True, device=device)
        y = ops.gather_rows(ops.transpose(W), nd(idx, "float64"))
        np.testing.assert_array_equal(y.numpy(), w.T[idx])
        y.sum().backward()  # the gradient of sum: a broadcast of ones into scatter_rows
    want = np.zeros((4, 3))
    np.add.at(want, idx, 1.0)
    np.testing.assert_array_equal(W.grad.numpy(), want.T)


@pytest.mark.parametrize("on", [True, False], ids=["slot", "composite"])
def test_bad_indices_raise_before_any_slot(on, device):
    W = ndl.init.ones(4, 2, device=device)
    with slots(on):
        with pytest.raises(IndexError, match="index 4 is out of range for 4 rows"):
            ops.gather_rows(W, ndl.Tensor([1.0, 4.0], requires_grad=False))
        with pytest.raises(IndexError, match="index -1 is out of range"):
            ops.scatter_rows(ndl.init.ones(2, 2, device=device),
                             ndl.Tensor([0.0, -1.0], requires_grad=False), (4, 2))


@pytest.mark.parametrize("on", [True, False], ids=["slot", "composite"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_gradient_matches_torch(dtype, on, device):
    num, dim, T, bs = 11, 5, 6, 4
    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(T, bs))  # few distinct words: many repeats
    G = rng.standard_normal((T, bs, dim))
    tdt = torch.float32 if dtype == "float32" else torch.float64
    with slots(on):
        emb = nn.Embedding(num, dim, dtype=dtype, device=device)
        y = emb(ndl.Tensor(x, requires_grad=False, device=device))
        (y * nd(G, dtype, device=device)).sum().backward()
    temb = torch.nn.Embedding(num, dim, dtype=tdt)
    with torch.no_grad():
        temb.weight.copy_(torch.from_numpy(emb.weight.numpy()))
    yt = temb(torch.from_numpy(x))
    (yt * torch.from_numpy(G).to(tdt)).sum().backward()
    np.testing.assert_array_equal(y.numpy(), yt.detach().numpy())
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(emb.weight.grad.numpy(), temb.weight.grad.numpy(), **tol)
