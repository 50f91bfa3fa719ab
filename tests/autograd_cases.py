"""The op table shared by the autograd tests (API.md 3, 4.1-4.5).

One row per op and case: a needle expression, the same expression in PyTorch
and in NumPy, the input shapes and value generators. The checkers below run a
row in needle and compare

- forward values with NumPy (float64 reference on the same rounded inputs),
- forward values and input gradients with PyTorch autograd (float64),
- input gradients with central finite differences of needle's own float64
  forward (eps 1e-6).

Every row can be run with its inputs laid out three ways: "plain" leaves;
"T": each input of ndim >= 2 is a leaf of the transposed shape passed through
`transpose()` (so the op sees a non-compact, permuted view); "B": each input
whose first dim is > 1 is a leaf with first dim 1 passed through
`broadcast_to` (a stride-0 view). The same transforms are applied in PyTorch,
so gradients are compared on the leaves.

This module is imported by test_autograd_ops.py (nd mode) and by
autograd_np_cases.py (run with NEEDLE_BACKEND=np); it must work in both.
"""
import numpy as np
import torch

import needle as ndl

IS_NP = ndl.BACKEND == "np"
NP_DTYPE = {"float32": np.float32, "float64": np.float64}


# --------------------------------------------------------------------------
# value generators: float64 NumPy arrays of a given shape
# --------------------------------------------------------------------------

def g_normal(shape):
    return np.asarray(np.random.randn(*shape))


def g_pos(shape):
    """In [0.5, 2]: safe for log, fractional and negative powers, denominators."""
    return np.asarray(np.random.rand(*shape) * 1.5 + 0.5)


def g_nonzero(shape):
    """|x| in [0.25, 1.25]: away from relu's kink and from zero denominators."""
    s = np.where(np.random.rand(*shape) < 0.5, -1.0, 1.0)
    return np.asarray(s * (np.random.rand(*shape) + 0.25))


def g_zeros(shape):
    """Exact zeros (also -0.0) mixed with nonzero values: relu's boundary."""
    x = g_nonzero(shape)
    u = np.random.rand(*shape)
    x = np.where(u < 0.25, 0.0, np.where(u < 0.4, -0.0, x))
    return np.asarray(x)


def g_exps(shape):
    """Exponents in [-2, 2]."""
    return np.asarray(np.random.rand(*shape) * 4 - 2)


def g_big(shape):
    """Around 1000: exp() overflows float64 without the max shift."""
    return np.asarray(np.random.randn(*shape) * 2 + 1000.0)


def g_wide(shape):
    """Spread over [-20, 20]: softmax far from uniform."""
    return np.asarray(np.random.randn(*shape) * 10)


def g_ties(shape):
    """Small integers: maxima tie, and Max shares the gradient among the ties."""
    return np.asarray(np.round(np.random.randn(*shape)))


GENS = {"ties": g_ties, "n": g_normal, "pos": g_pos, "nz": g_nonzero, "zero": g_zeros,
        "exp": g_exps, "big": g_big, "wide": g_wide}


# --------------------------------------------------------------------------
# NumPy / PyTorch references that have no one-line equivalent
# --------------------------------------------------------------------------

def np_lse(z, axes):
    m = np.max(z, axis=axes, keepdims=True)
    r = np.log(np.sum(np.exp(z - m), axis=axes, keepdims=True)) + m
    if axes is None:
        return r.reshape(())
    return np.squeeze(r, axis=axes)


def np_logsoftmax(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def t_lse(x, axes):
    if axes is None:
        return torch.logsumexp(x.reshape(-1), 0)
    return torch.logsumexp(x, dim=axes)


def t_sum(x, axes):
    if axes is None:
        return x.sum()
    return x.sum(dim=axes)


def _dilate_index(shape, axes, d):
    new = list(shape)
    idx = [slice(None)] * len(shape)
    for ax in axes:
        if ax < len(shape):
            new[ax] *= d + 1
            idx[ax] = slice(None, None, d + 1)
    return tuple(new), tuple(idx)


def np_dilate(x, axes, d):
    new, idx = _dilate_index(x.shape, axes, d)
    out = np.zeros(new, dtype=x.dtype)
    out[idx] = x
    return out


def t_dilate(x, axes, d):
    new, idx = _dilate_index(x.shape, axes, d)
    out = x.new_zeros(new)
    out[idx] = x
    return out


def undilate_index(ndim, axes, d):
    idx = [slice(None)] * ndim
    for ax in axes:
        if ax < ndim:
            idx[ax] = slice(None, None, d + 1)
    return tuple(idx)


def ndl_split_combine(a, axis):
    """Weighted sum of the pieces of split(a, axis): every piece gets a gradient."""
    parts = ndl.split(a, axis)
    acc = parts[0] * 1.0
    for i in range(1, len(parts)):
        acc = acc + parts[i] * float(i + 1)
    return acc


def t_split_combine(a, axis):
    parts = torch.unbind(a, axis)
    acc = parts[0] * 1.0
    for i in range(1, len(parts)):
        acc = acc + parts[i] * float(i + 1)
    return acc


def np_split_combine(a, axis):
    return sum(np.take(a, i, axis=axis) * float(i + 1) for i in range(a.shape[axis]))


def ndl_tuple_roundtrip(a, b):
    """make_tuple + unfolded TupleGetItem: the tuple ops themselves in the graph."""
    t = ndl.make_tuple(a, b)
    x = ndl.ops.TupleGetItem(0)(t, fold_const=False)
    y = ndl.ops.TupleGetItem(1)(t, fold_const=False)
    return x * y + x


def ndl_fused(a):
    t = ndl.fused_add_scalars(a, 1.5, -2.0)
    return t[0] * t[1]


def ndl_fused_first(a):
    """Only the first output used: the second gets a zero adjoint."""
    t = ndl.fused_add_scalars(a, 1.5, -2.0)
    return ndl.ops.TupleGetItem(0)(t) * 3.0


# --------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------

class Case:
    """One row: `nf`/`tf`/`npf` take inputs positionally and return one array."""

    def __init__(self, id, nf, tf, npf, shapes, gens="n", fd=True, layouts=True):
        self.id = id.replace(" ", "")
        self.nf, self.tf, self.npf = nf, tf, npf
        self.shapes = [tuple(s) for s in shapes]
        if isinstance(gens, str):
            gens = [gens] * len(self.shapes)
        self.gens = list(gens)
        self.fd = fd            # finite differences meaningful (smooth at the inputs)
        self.layouts = layouts  # non-compact variants meaningful

    def __repr__(self):
        return self.id


CASES = []


def add(*args, **kw):
    CASES.append(Case(*args, **kw))


# -- binary elementwise, same and NumPy-broadcast shapes, 0-d -------------
BIN_SHAPES = [
    ("same", (3, 4), (3, 4)),
    ("bcast_col_row", (3, 1), (1, 4)),
    ("bcast_prepend", (2, 3, 4), (4,)),
    ("bcast_prepend_b", (4,), (2, 3, 4)),
    ("bcast_1x3_3", (1, 3), (3,)),
    ("bcast_mid", (2, 1, 4), (3, 1)),
    ("scalar0d_matrix", (), (2, 3)),
    ("matrix_scalar0d", (2, 3), ()),
    ("both0d", (), ()),
]
for tag, sa, sb in BIN_SHAPES:
    add(f"add-{tag}", lambda a, b: ndl.add(a, b), lambda a, b: a + b, np.add, [sa, sb])
    add(f"multiply-{tag}", lambda a, b: ndl.multiply(a, b), lambda a, b: a * b, np.multiply,
        [sa, sb])
    add(f"divide-{tag}", lambda a, b: ndl.divide(a, b), lambda a, b: a / b, np.divide,
        [sa, sb], gens=["n", "nz"])
    add(f"power-{tag}", lambda a, b: ndl.power(a, b), lambda a, b: a ** b, np.power,
        [sa, sb], gens=["pos", "exp"])

# -- operator overloads (3.5) incl. reflected ones --------------------------
add("op-add", lambda a, b: a + b, lambda a, b: a + b, np.add, [(3, 4), (3, 4)])
add("op-sub", lambda a, b: a - b, lambda a, b: a - b, np.subtract, [(3, 4), (3, 4)])
add("op-sub-bcast", lambda a, b: a - b, lambda a, b: a - b, np.subtract, [(2, 3, 4), (3, 1)])
add("op-mul", lambda a, b: a * b, lambda a, b: a * b, np.multiply, [(3, 4), (3, 4)])
add("op-div", lambda a, b: a / b, lambda a, b: a / b, np.divide, [(3, 4), (3, 4)],
    gens=["n", "nz"])
add("op-pow", lambda a, b: a ** b, lambda a, b: a ** b, np.power, [(3, 4), (3, 4)],
    gens=["pos", "exp"])
add("op-matmul", lambda a, b: a @ b, lambda a, b: a @ b, np.matmul, [(3, 4), (4, 2)])
add("op-matmul-method", lambda a, b: a.matmul(b), lambda a, b: a @ b, np.matmul,
    [(3, 4), (4, 2)])
add("op-neg", lambda a: -a, lambda a: -a, np.negative, [(3, 4)])
add("op-add-scalar", lambda a: a + 1.25, lambda a: a + 1.25, lambda a: a + 1.25, [(3, 4)])
add("op-radd-scalar", lambda a: 1.25 + a, lambda a: 1.25 + a, lambda a: 1.25 + a, [(3, 4)])
add("op-sub-scalar", lambda a: a - 0.75, lambda a: a - 0.75, lambda a: a - 0.75, [(3, 4)])
add("op-rsub-scalar", lambda a: 0.75 - a, lambda a: 0.75 - a, lambda a: 0.75 - a, [(3, 4)])
add("op-mul-scalar", lambda a: a * -2.5, lambda a: a * -2.5, lambda a: a * -2.5, [(3, 4)])
add("op-rmul-scalar", lambda a: 3 * a, lambda a: 3 * a, lambda a: 3 * a, [(3, 4)])
add("op-div-scalar", lambda a: a / 4.0, lambda a: a / 4.0, lambda a: a / 4.0, [(3, 4)])
add("op-rdiv-scalar", lambda a: 2.0 / a, lambda a: 2.0 / a, lambda a: 2.0 / a, [(3, 4)],
    gens="nz")
add("op-pow-scalar", lambda a: a ** 2, lambda a: a ** 2, lambda a: a ** 2, [(3, 4)])
add("op-sum-method", lambda a: a.sum(), lambda a: a.sum(), np.sum, [(3, 4)])
add("op-sum-method-pos-axes", lambda a: a.sum(1), lambda a: a.sum(1),
    lambda a: a.sum(1), [(3, 4)])
add("op-sum-method-kw-axes", lambda a: a.sum(axes=(0,)), lambda a: a.sum(0),
    lambda a: a.sum(0), [(3, 4)])
add("op-reshape-method", lambda a: a.reshape((4, 3)), lambda a: a.reshape(4, 3),
    lambda a: a.reshape(4, 3), [(3, 4)])
add("op-broadcast-method", lambda a: a.broadcast_to((2, 3, 4)),
    lambda a: a.expand(2, 3, 4), lambda a: np.broadcast_to(a, (2, 3, 4)), [(3, 4)])
add("op-transpose-method", lambda a: a.transpose(), lambda a: a.transpose(-1, -2),
    lambda a: np.swapaxes(a, -1, -2), [(2, 3, 4)])
add("op-transpose-method-axes", lambda a: a.transpose((0, 1)), lambda a: a.transpose(0, 1),
    lambda a: np.swapaxes(a, 0, 1), [(2, 3, 4)])

# -- scalar ops: scalar types and 0-d ---------------------------------------
SCALARS = [("float", 1.75), ("int", 3), ("np_float32", np.float32(-0.5)),
           ("np_float64", np.float64(2.25)), ("np_int64", np.int64(-2)),
           ("0d_array", np.array(1.5))]
for tag, s in SCALARS:
    fs = float(np.asarray(s).reshape(()))
    add(f"add_scalar-{tag}", lambda a, s=s: ndl.add_scalar(a, s), lambda a, fs=fs: a + fs,
        lambda a, fs=fs: a + fs, [(3, 4)])
    add(f"mul_scalar-{tag}", lambda a, s=s: ndl.mul_scalar(a, s), lambda a, fs=fs: a * fs,
        lambda a, fs=fs: a * fs, [(3, 4)])
    add(f"divide_scalar-{tag}", lambda a, s=s: ndl.divide_scalar(a, s),
        lambda a, fs=fs: a / fs, lambda a, fs=fs: a / fs, [(3, 4)])
add("add_scalar-0d", lambda a: ndl.add_scalar(a, 2.0), lambda a: a + 2.0, lambda a: a + 2.0,
    [()])
add("mul_scalar-0d", lambda a: ndl.mul_scalar(a, -3.0), lambda a: a * -3.0,
    lambda a: a * -3.0, [()])
add("divide_scalar-0d", lambda a: ndl.divide_scalar(a, 8.0), lambda a: a / 8.0,
    lambda a: a / 8.0, [()])

# -- power_scalar: integer, negative, fractional, zero exponents ------------
POWERS = [("2", 2, "n"), ("3_negbase", 3, "n"), ("1", 1, "n"), ("0", 0, "pos"),
          ("0.0_float", 0.0, "pos"), ("half", 0.5, "pos"), ("neg1", -1, "nz"),
          ("neg2.5", -2.5, "pos"), ("1.7", 1.7, "pos"), ("neg3_negbase", -3, "nz"),
          ("np_float32_1.5", np.float32(1.5), "pos")]
for tag, s, gen in POWERS:
    fs = float(s)
    add(f"power_scalar-{tag}", lambda a, s=s: ndl.power_scalar(a, s), lambda a, fs=fs: a ** fs,
        lambda a, fs=fs: a ** fs, [(3, 4)], gens=gen)
add("power_scalar-0d", lambda a: ndl.power_scalar(a, 3), lambda a: a ** 3, lambda a: a ** 3,
    [()])

# -- unary ------------------------------------------------------------------
UNARY = [
    ("negate", lambda a: ndl.negate(a), lambda a: -a, np.negative, "n", True),
    ("log", lambda a: ndl.log(a), torch.log, np.log, "pos", True),
    ("exp", lambda a: ndl.exp(a), torch.exp, np.exp, "n", True),
    ("relu", lambda a: ndl.relu(a), torch.relu, lambda a: np.maximum(a, 0.0), "nz", True),
    ("relu_at_zero", lambda a: ndl.relu(a), torch.relu, lambda a: np.maximum(a, 0.0), "zero",
     False),
    ("tanh", lambda a: ndl.tanh(a), torch.tanh, np.tanh, "n", True),
]
for name, nf, tf, npf, gen, fd in UNARY:
    add(f"{name}", nf, tf, npf, [(3, 4)], gens=gen, fd=fd)
    add(f"{name}-3d", nf, tf, npf, [(2, 3, 4)], gens=gen, fd=fd)
    add(f"{name}-0d", nf, tf, npf, [()], gens=("nz" if gen == "zero" else gen), fd=True)

# -- transpose --------------------------------------------------------------
add("transpose-default-2d", lambda a: ndl.transpose(a), lambda a: a.transpose(-1, -2),
    lambda a: np.swapaxes(a, -1, -2), [(3, 4)])
add("transpose-default-3d", lambda a: ndl.transpose(a), lambda a: a.transpose(-1, -2),
    lambda a: np.swapaxes(a, -1, -2), [(2, 3, 4)])
add("transpose-none-4d", lambda a: ndl.transpose(a, None), lambda a: a.transpose(-1, -2),
    lambda a: np.swapaxes(a, -1, -2), [(2, 1, 3, 4)])
add("transpose-axes02", lambda a: ndl.transpose(a, (0, 2)), lambda a: a.transpose(0, 2),
    lambda a: np.swapaxes(a, 0, 2), [(2, 3, 4)])
add("transpose-axes10", lambda a: ndl.transpose(a, (1, 0)), lambda a: a.transpose(1, 0),
    lambda a: np.swapaxes(a, 1, 0), [(3, 4)])
add("transpose-axes01-3d", lambda a: ndl.transpose(a, (0, 1)), lambda a: a.transpose(0, 1),
    lambda a: np.swapaxes(a, 0, 1), [(2, 3, 4)])

# -- reshape ----------------------------------------------------------------
RESHAPES = [("flat", (2, 3, 4), (24,)), ("merge", (2, 3, 4), (6, 4)),
            ("split", (6, 4), (2, 3, 2, 2)), ("list", (3, 4), [2, 6]),
            ("0d_to_11", (), (1, 1)), ("11_to_0d", (1, 1), ()), ("same", (3, 4), (3, 4)),
            ("add_unit", (3, 4), (3, 1, 4))]
for tag, s, new in RESHAPES:
    add(f"reshape-{tag}", lambda a, new=new: ndl.reshape(a, new),
        lambda a, new=new: a.reshape(tuple(new)), lambda a, new=new: a.reshape(tuple(new)), [s])
# reshape of an explicitly non-compact input (a transposed view), every layout
add("reshape-of-transpose", lambda a: ndl.reshape(ndl.transpose(a), (12,)),
    lambda a: a.transpose(-1, -2).reshape(12), lambda a: np.swapaxes(a, -1, -2).reshape(12),
    [(3, 4)])
add("reshape-of-broadcast", lambda a: ndl.reshape(ndl.broadcast_to(a, (2, 3, 4)), (4, 6)),
    lambda a: a.expand(2, 3, 4).reshape(4, 6),
    lambda a: np.broadcast_to(a, (2, 3, 4)).reshape(4, 6), [(3, 1)])

# -- broadcast_to -----------------------------------------------------------
BCASTS = [("col", (3, 1), (3, 4)), ("row", (1, 4), (3, 4)), ("prepend", (4,), (3, 4)),
          ("prepend2", (1, 4), (2, 3, 4)), ("0d", (), (2, 3)), ("1", (1,), (5,)),
          ("mid", (2, 1, 3), (2, 4, 3)), ("list", (3, 1), [3, 4]), ("same", (3, 4), (3, 4)),
          ("multi", (1, 3, 1), (2, 3, 4))]
for tag, s, new in BCASTS:
    add(f"broadcast_to-{tag}", lambda a, new=new: ndl.broadcast_to(a, new),
        lambda a, new=new: a.expand(*new), lambda a, new=new: np.broadcast_to(a, tuple(new)),
        [s])

# -- summation --------------------------------------------------------------
SUMS = [("none", (3, 4), None), ("ax0", (3, 4), 0), ("ax1", (3, 4), 1),
        ("tuple1", (3, 4), (1,)), ("tuple02", (2, 3, 4), (0, 2)), ("ax1-3d", (2, 3, 4), 1),
        ("all_tuple", (2, 3, 4), (0, 1, 2)), ("none-3d", (2, 3, 4), None),
        ("0d-none", (), None), ("1d-ax0", (5,), 0)]
for tag, s, axes in SUMS:
    add(f"summation-{tag}", lambda a, axes=axes: ndl.summation(a, axes=axes),
        lambda a, axes=axes: t_sum(a, axes), lambda a, axes=axes: np.sum(a, axis=axes), [s])
add("summation-positional-axes", lambda a: ndl.summation(a, (0, 1)),
    lambda a: a.sum(dim=(0, 1)), lambda a: a.sum(axis=(0, 1)), [(2, 3, 4)])

# -- matmul -----------------------------------------------------------------
MATMULS = [("2d", (3, 4), (4, 5)), ("outer", (5, 1), (1, 5)), ("1x1", (1, 1), (1, 1)),
           ("inner", (1, 6), (6, 1)), ("batched", (2, 3, 4), (2, 4, 5)),
           ("batch_2d", (2, 3, 4), (4, 5)), ("2d_batch", (3, 4), (2, 4, 5)),
           ("bcast_batch", (2, 1, 3, 4), (3, 4, 2)), ("bcast_batch1", (1, 3, 4), (2, 4, 5)),
           ("bcast_4d", (2, 1, 3, 4), (1, 3, 4, 2))]
for tag, sa, sb in MATMULS:
    add(f"matmul-{tag}", lambda a, b: ndl.matmul(a, b), torch.matmul, np.matmul, [sa, sb])

# -- logsoftmax / logsumexp -------------------------------------------------
for tag, s, gen in [("n", (4, 5), "n"), ("wide", (3, 6), "wide"), ("big", (3, 4), "big"),
                    ("1col", (3, 1), "n")]:
    add(f"logsoftmax-{tag}", lambda a: ndl.logsoftmax(a), lambda a: torch.log_softmax(a, 1),
        np_logsoftmax, [s], gens=gen)
LSES = [("none", (3, 4), None), ("ax0", (3, 4), 0), ("ax1", (3, 4), 1),
        ("tuple1", (3, 4), (1,)), ("tuple02", (2, 3, 4), (0, 2)), ("all", (2, 3, 4), (0, 1, 2)),
        ("0d", (), None), ("1d", (6,), 0)]
for tag, s, axes in LSES:
    for gen in ["n", "big", "wide"]:
        add(f"logsumexp-{tag}-{gen}", lambda a, axes=axes: ndl.logsumexp(a, axes=axes),
            lambda a, axes=axes: t_lse(a, axes), lambda a, axes=axes: np_lse(a, axes), [s],
            gens=gen)
add("logsumexp-default-axes", lambda a: ndl.logsumexp(a), lambda a: t_lse(a, None),
    lambda a: np_lse(a, None), [(3, 4)])

# -- tuple ops --------------------------------------------------------------
for axis in [0, 1, 2]:
    add(f"stack-3x(2,3)-axis{axis}", lambda a, b, c, axis=axis: ndl.stack([a, b, c], axis),
        lambda a, b, c, axis=axis: torch.stack([a, b, c], axis),
        lambda a, b, c, axis=axis: np.stack([a, b, c], axis), [(2, 3)] * 3)
add("stack-single", lambda a: ndl.stack([a], 1), lambda a: torch.stack([a], 1),
    lambda a: np.stack([a], 1), [(2, 3)])
add("stack-0d", lambda a, b: ndl.stack([a, b], 0), lambda a, b: torch.stack([a, b], 0),
    lambda a, b: np.stack([a, b], 0), [(), ()])
add("stack-1d-axis1", lambda a, b: ndl.stack([a, b], 1), lambda a, b: torch.stack([a, b], 1),
    lambda a, b: np.stack([a, b], 1), [(3,), (3,)])
for s, axis in [((3, 4), 0), ((3, 4), 1), ((2, 3, 4), 1), ((2, 3, 4), 2), ((4,), 0)]:
    add(f"split-{s}-axis{axis}", lambda a, axis=axis: ndl_split_combine(a, axis),
        lambda a, axis=axis: t_split_combine(a, axis),
        lambda a, axis=axis: np_split_combine(a, axis), [s])
add("split-then-stack", lambda a: ndl.stack(list(ndl.split(a, 1)), 0),
    lambda a: torch.stack(list(torch.unbind(a, 1)), 0), lambda a: np.moveaxis(a, 1, 0),
    [(3, 4)])
add("make_tuple-get_item-nofold", ndl_tuple_roundtrip, lambda a, b: a * b + a,
    lambda a, b: a * b + a, [(3, 4), (3, 4)])
add("fused_add_scalars", ndl_fused, lambda a: (a + 1.5) * (a - 2.0),
    lambda a: (a + 1.5) * (a - 2.0), [(3, 4)])
add("fused_add_scalars-first-only", ndl_fused_first, lambda a: (a + 1.5) * 3.0,
    lambda a: (a + 1.5) * 3.0, [(3, 4)])

# -- flip -------------------------------------------------------------------
for axes in [(0,), (1,), (2,), (1, 2), (0, 1, 2), (0, 2)]:
    add(f"flip-{axes}", lambda a, axes=axes: ndl.flip(a, axes),
        lambda a, axes=axes: torch.flip(a, axes), lambda a, axes=axes: np.flip(a, axes),
        [(2, 3, 4)])
add("flip-2d-both", lambda a: ndl.flip(a, (0, 1)), lambda a: torch.flip(a, (0, 1)),
    lambda a: np.flip(a, (0, 1)), [(3, 4)])

# -- dilate / undilate (4.5) -----------------------------------------------
DILATES = [((2, 3), (0,), 1), ((2, 3), (1,), 2), ((2, 3), (0, 1), 1), ((2, 3), (0, 1), 0),
           ((2, 3), (0, 5), 1), ((2, 2, 3), (1, 2), 1), ((3,), (0,), 3)]
for s, axes, d in DILATES:
    add(f"dilate-{s}-{axes}-d{d}", lambda a, axes=axes, d=d: ndl.dilate(a, axes, d),
        lambda a, axes=axes, d=d: t_dilate(a, axes, d),
        lambda a, axes=axes, d=d: np_dilate(a, axes, d), [s])
UNDILATES = [((4, 6), (0,), 1), ((4, 6), (1,), 2), ((4, 6), (0, 1), 1), ((4, 6), (0, 1), 0),
             ((4, 6), (1, 7), 1), ((2, 4, 6), (1, 2), 1), ((8,), (0,), 3)]
for s, axes, d in UNDILATES:
    add(f"undilate-{s}-{axes}-d{d}", lambda a, axes=axes, d=d: ndl.undilate(a, axes, d),
        lambda a, axes=axes, d=d: a[undilate_index(a.ndim, axes, d)],
        lambda a, axes=axes, d=d: a[undilate_index(a.ndim, axes, d)], [s])
add("dilate-undilate-roundtrip", lambda a: ndl.undilate(ndl.dilate(a, (0, 1), 2), (0, 1), 2),
    lambda a: a * 1.0, lambda a: a * 1.0, [(2, 3)])

# -- small composite expressions (several ops in one graph) -----------------
add("composite-mlp", lambda x, w, b: ndl.relu(x @ w + b).sum(),
    lambda x, w, b: torch.relu(x @ w + b).sum(),
    lambda x, w, b: np.maximum(x @ w + b, 0).sum(), [(4, 3), (3, 5), (5,)], gens="nz",
    fd=False)
add("composite-softmax-ce", lambda z, y: (ndl.logsumexp(z, (1,)) - (z * y).sum((1,))).sum(),
    lambda z, y: (torch.logsumexp(z, 1) - (z * y).sum(1)).sum(),
    lambda z, y: (np_lse(z, (1,)) - (z * y).sum(1)).sum(), [(4, 5), (4, 5)])
add("composite-shared", lambda a: (a * a + ndl.exp(a) * a).sum((0,)) / 3.0,
    lambda a: (a * a + torch.exp(a) * a).sum(0) / 3.0,
    lambda a: (a * a + np.exp(a) * a).sum(0) / 3.0, [(3, 4)])
add("composite-tanh-pow", lambda a, b: ndl.tanh(a) ** 2 * b - b / (a * a + 1.0),
    lambda a, b: torch.tanh(a) ** 2 * b - b / (a * a + 1.0),
    lambda a, b: np.tanh(a) ** 2 * b - b / (a * a + 1.0), [(2, 3), (2, 3)])

# -- size-0 inputs -----------------------------------------------------------
add("size0-add", lambda a, b: ndl.add(a, b), lambda a, b: a + b, np.add, [(0, 3), (3,)])
add("size0-exp", lambda a: ndl.exp(a), torch.exp, np.exp, [(0, 3)])
add("size0-summation-ax0", lambda a: ndl.summation(a, axes=(0,)), lambda a: a.sum(0),
    lambda a: a.sum(0), [(0, 3)])
add("size0-summation-none", lambda a: ndl.summation(a), lambda a: a.sum(), np.sum, [(2, 0)])
add("size0-matmul-inner", lambda a, b: ndl.matmul(a, b), torch.matmul, np.matmul,
    [(2, 0), (0, 3)])
add("size0-matmul-outer", lambda a, b: ndl.matmul(a, b), torch.matmul, np.matmul,
    [(0, 4), (4, 3)])
add("size0-reshape", lambda a: ndl.reshape(a, (3, 0)), lambda a: a.reshape(3, 0),
    lambda a: a.reshape(3, 0), [(0, 3)])
add("size0-broadcast_to", lambda a: ndl.broadcast_to(a, (2, 0)), lambda a: a.expand(2, 0),
    lambda a: np.broadcast_to(a, (2, 0)), [(1, 0)])
add("size0-transpose", lambda a: ndl.transpose(a), lambda a: a.transpose(-1, -2),
    lambda a: np.swapaxes(a, -1, -2), [(0, 3)])

# -- the ops added as rows of csrc/ops.def (extensions: Sin, Cos, Sigmoid, Max,
#    Permute) --------------------------------------------------------------
def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def t_amax(x, axes):
    return torch.amax(x, dim=tuple(range(x.dim())) if axes is None else axes)


add("sin", lambda a: ndl.sin(a), torch.sin, np.sin, [(3, 4)])
add("sin-method", lambda a: a.sin(), torch.sin, np.sin, [(2, 3, 4)])
add("cos", lambda a: ndl.cos(a), torch.cos, np.cos, [(3, 4)])
add("cos-method-0d", lambda a: a.cos(), torch.cos, np.cos, [()])
add("sin-cos-chain", lambda a: ndl.sin(ndl.cos(a) * 2.0), lambda a: torch.sin(torch.cos(a) * 2.0),
    lambda a: np.sin(np.cos(a) * 2.0), [(4, 3)], gens="wide")
add("sigmoid", lambda a: ndl.sigmoid(a), torch.sigmoid, np_sigmoid, [(3, 4)])
add("sigmoid-wide", lambda a: ndl.sigmoid(a), torch.sigmoid, np_sigmoid, [(5, 4)], gens="wide")
add("sigmoid-method", lambda a: a.sigmoid(), torch.sigmoid, np_sigmoid, [(2, 3, 4)])
for axes in [None, (1,), (0, 2), (2, 0), 1, (-1,)]:
    ax = (axes,) if isinstance(axes, int) else axes
    add(f"max-{axes}", lambda a, axes=axes: ndl.max(a, axes),
        lambda a, ax=ax: t_amax(a, ax), lambda a, ax=ax: np.max(a, axis=ax), [(3, 4, 5)])
add("max-method", lambda a: a.max((1,)), lambda a: torch.amax(a, 1), lambda a: a.max(1),
    [(3, 4)])
add("max-class", lambda a: ndl.ops.Max(axes=(0,))(a), lambda a: torch.amax(a, 0),
    lambda a: a.max(0), [(3, 4)])
add("max-ties", lambda a: ndl.max(a, (1,)), lambda a: torch.amax(a, 1), lambda a: a.max(1),
    [(6, 7)], gens="ties", fd=False)
add("max-ties-all", lambda a: ndl.max(a), lambda a: a.amax((0, 1)), np.max, [(4, 5)],
    gens="ties", fd=False)
add("max-times-input", lambda a: ndl.max(a * a, (0,)) * 2.0, lambda a: torch.amax(a * a, 0) * 2.0,
    lambda a: (a * a).max(0) * 2.0, [(4, 3)])
for perm in [(2, 0, 1), (1, 0, 2), (0, 1, 2), (-1, 0, 1), None]:
    tp = tuple(range(2, -1, -1)) if perm is None else tuple(p % 3 for p in perm)
    add(f"permute-{perm}", lambda a, perm=perm: ndl.permute(a, perm),
        lambda a, tp=tp: a.permute(*tp), lambda a, tp=tp: np.transpose(a, tp), [(2, 3, 4)])
add("permute-method", lambda a: a.permute((1, 0)), lambda a: a.permute(1, 0),
    lambda a: a.T, [(3, 5)])
add("permute-then-matmul", lambda a, b: ndl.permute(a, (0, 2, 1)) @ b,
    lambda a, b: a.permute(0, 2, 1) @ b, lambda a, b: np.transpose(a, (0, 2, 1)) @ b,
    [(2, 4, 3), (4, 5)])

CASE_BY_ID = {c.id: c for c in CASES}
assert len(CASE_BY_ID) == len(CASES), "duplicate case ids"


# --------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------

def _applies(layout, shape):
    if layout == "T":
        return len(shape) >= 2
    if layout == "B":
        return len(shape) >= 1 and shape[0] > 1
    return False


def layouts_for(case):
    out = ["plain"]
    if case.layouts:
        for lay in ("T", "B"):
            if any(_applies(lay, s) for s in case.shapes):
                out.append(lay)
    return out


def leaf_shape(layout, shape):
    if not _applies(layout, shape):
        return shape
    if layout == "T":
        return shape[:-2] + (shape[-1], shape[-2])
    return (1,) + shape[1:]


def to_layout(lib, layout, x, shape):
    """The view of leaf `x` that has `shape`, built with the layout's op."""
    if not _applies(layout, shape):
        return x
    if layout == "T":
        if lib == "ndl":
            return ndl.transpose(x)
        if lib == "torch":
            return x.transpose(-1, -2)
        return np.swapaxes(x, -1, -2)
    if lib == "ndl":
        return ndl.broadcast_to(x, shape)
    if lib == "torch":
        return x.expand(*shape)
    return np.broadcast_to(x, shape)


def case_params(cases=None, layouts=True):
    """(case, layout) pairs for pytest.mark.parametrize, with readable ids."""
    import pytest
    out = []
    for c in (CASES if cases is None else cases):
        for lay in (layouts_for(c) if layouts else ["plain"]):
            out.append(pytest.param(c, lay, id=f"{c.id}[{lay}]"))
    return out


# --------------------------------------------------------------------------
# running a row
# --------------------------------------------------------------------------

def make_leaf_arrays(case, layout):
    return [GENS[g](leaf_shape(layout, s)) for s, g in zip(case.shapes, case.gens)]


def to_numpy(t):
    return np.asarray(t.numpy())


def run_needle(case, layout, arrays, dtype, device=None):
    leaves = [ndl.Tensor(x, dtype=dtype, device=device) for x in arrays]
    ins = [to_layout("ndl", layout, l, s) for l, s in zip(leaves, case.shapes)]
    return leaves, case.nf(*ins)


def run_torch(case, layout, arrays, out_grad):
    """float64 PyTorch forward values and leaf gradients for seed `out_grad`."""
    leaves = [torch.tensor(np.asarray(x, dtype=np.float64), requires_grad=True) for x in arrays]
    ins = [to_layout("torch", layout, l, s) for l, s in zip(leaves, case.shapes)]
    out = case.tf(*ins)
    out.backward(torch.tensor(np.asarray(out_grad, dtype=np.float64)))
    grads = [l.grad.numpy() if l.grad is not None else np.zeros(l.shape) for l in leaves]
    return out.detach().numpy(), grads


def run_numpy(case, layout, arrays):
    ins = [to_layout("np", layout, np.asarray(x, dtype=np.float64), s)
           for x, s in zip(arrays, case.shapes)]
    return np.asarray(case.npf(*ins), dtype=np.float64)


def tol(dtype, ref):
    scale = max(1.0, float(np.max(np.abs(ref)))) if np.size(ref) else 1.0
    if dtype == "float64":
        return dict(rtol=1e-9, atol=1e-11 * scale)
    return dict(rtol=3e-5, atol=3e-6 * scale)


def check_dtype(t, dtype):
    assert t.dtype == dtype, (t.dtype, dtype)
    if IS_NP:
        assert isinstance(t.cached_data, np.ndarray), type(t.cached_data)
        assert t.cached_data.dtype == np.dtype(dtype)
    else:
        assert isinstance(t.cached_data, ndl.NDArray), type(t.cached_data)


def check_against_references(case, layout, dtype, device=None):
    """Forward vs NumPy and PyTorch; leaf gradients vs PyTorch autograd."""
    arrays = [x.astype(NP_DTYPE[dtype]).astype(np.float64) for x in
              make_leaf_arrays(case, layout)]
    ref_np = run_numpy(case, layout, arrays)
    g = np.asarray(np.random.randn(*ref_np.shape)).astype(NP_DTYPE[dtype]).astype(np.float64)
    ref_t, ref_grads = run_torch(case, layout, arrays, g)

    leaves, out = run_needle(case, layout, arrays, dtype, device)
    want_device = device if device is not None else ndl.default_device()
    assert out.device == want_device, (out.device, want_device)
    assert isinstance(out, ndl.Tensor) and not isinstance(out, ndl.TensorTuple)
    assert type(out) is ndl.Tensor
    assert out.shape == ref_np.shape, (out.shape, ref_np.shape)
    check_dtype(out, dtype)
    assert out.requires_grad
    got = to_numpy(out)
    assert got.dtype == NP_DTYPE[dtype]
    np.testing.assert_allclose(got, ref_np, **tol(dtype, ref_np), err_msg="forward vs numpy")
    np.testing.assert_allclose(got, ref_t, **tol(dtype, ref_t), err_msg="forward vs torch")

    out.backward(ndl.Tensor(g, dtype=dtype, requires_grad=False, device=device))
    for i, (leaf, rg) in enumerate(zip(leaves, ref_grads)):
        assert leaf.grad is not None, f"input {i} got no gradient"
        assert leaf.grad.device == want_device, (i, leaf.grad.device)
        assert leaf.grad.shape == leaf.shape, (i, leaf.grad.shape, leaf.shape)
        check_dtype(leaf.grad, dtype)
        np.testing.assert_allclose(to_numpy(leaf.grad), rg, **tol(dtype, rg),
                                   err_msg=f"gradient of input {i} vs torch")


def check_finite_differences(case, layout, eps=1e-6):
    """float64 gradients vs central differences of needle's own forward."""
    arrays = make_leaf_arrays(case, layout)
    ref = run_numpy(case, layout, arrays)
    w = np.asarray(np.random.randn(*ref.shape))

    def f(arrs):
        _, out = run_needle(case, layout, arrs, "float64")
        return float(np.sum(to_numpy(out) * w))

    leaves, out = run_needle(case, layout, arrays, "float64")
    out.backward(ndl.Tensor(w, dtype="float64", requires_grad=False))
    # roundoff bound: each evaluation of f is exact to ~1e-16 * sum|out * w|
    scale = float(np.sum(np.abs(ref * w)))
    for i, x in enumerate(arrays):
        num = np.zeros(x.shape)
        for j in range(x.size):
            xp, xm = x.copy(), x.copy()
            xp.flat[j] += eps
            xm.flat[j] -= eps
            arrs_p = arrays[:i] + [xp] + arrays[i + 1:]
            arrs_m = arrays[:i] + [xm] + arrays[i + 1:]
            num.flat[j] = (f(arrs_p) - f(arrs_m)) / (2 * eps)
        got = to_numpy(leaves[i].grad)
        assert got.shape == x.shape
        np.testing.assert_allclose(got, num, rtol=1e-6, atol=1e-8 + 1e-9 * scale,
                                   err_msg=f"gradient of input {i} vs finite differences")
