"""Tools that find bugs and explain tensors: gradcheck, detect_anomaly, profile, printoptions.

They read the graph and the arrays; the C core gives them two hooks and nothing else
(`_C._set_op_hook`: every op's forward and every gradient rule, timed; `_C._set_repr_hook`:
repr and `_repr_html_`).

>>> import numpy as np, needle as ndl
>>> ndl.gradcheck(lambda a, b: (a * b).sum(), [np.ones((2, 3)), np.arange(6.0).reshape(2, 3)])
True
"""
from __future__ import annotations

import contextlib
import html
import math
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import _C
from .autograd import Tensor, find_topo_sort, no_grad

__all__ = ["set_printoptions", "get_printoptions", "printoptions", "gradcheck", "GradcheckError",
           "detect_anomaly", "AnomalyError", "profile", "Profile", "machine_peak"]

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------

def _data(x: Any) -> Any:
    """The array of a Tensor (NDArray, or numpy.ndarray in np mode), or x itself."""
    return x.realize_cached_data() if isinstance(x, _C.Value) else x


def _np(x: Any) -> np.ndarray:
    return np.asarray(_data(x))


def _nbytes(x: Any) -> int:
    d = _data(x)
    if isinstance(d, tuple):
        return sum(_nbytes(e) for e in d)
    size = getattr(d, "size", None)
    if size is None:
        return 0
    return int(size) * _ITEMSIZE.get(str(d.dtype), 4)


_ITEMSIZE = {"float32": 4, "float64": 8, "int64": 8, "int32": 4, "bool": 1}


def _shape(x: Any) -> Tuple[int, ...]:
    d = _data(x)
    if isinstance(d, tuple):
        return tuple(_shape(e) for e in d)  # type: ignore[return-value]
    return tuple(getattr(d, "shape", ()))


def _op_name(op: Any) -> str:
    return type(op).__name__


_FILE_KIND: Dict[str, int] = {}  # co_filename -> 0 user code, 1 needle, 2 this module


def _file_kind(name: str) -> int:
    kind = _FILE_KIND.get(name)
    if kind is None:
        path = os.path.abspath(name)
        kind = 2 if path == os.path.abspath(__file__) else (
            1 if path.startswith(_PKG_DIR + os.sep) else 0)
        _FILE_KIND[name] = kind
    return kind


def _fmt_frame(fr: Any) -> str:
    name = fr.f_code.co_filename
    if "ipykernel_" in name or name.startswith("<ipython-input"):
        return f"line {fr.f_lineno} of the notebook cell"  # IPython's cells are temp files
    return f"{os.path.basename(name)}:{fr.f_lineno} in {fr.f_code.co_name}"


def _where() -> str:
    """The Python line that is creating an op: the first frame outside the needle package
    (the user's line), and the innermost frame outside this module when that is inside
    needle (a module's forward, say)."""
    f = sys._getframe(1)
    inner = None
    while f is not None:
        kind = _file_kind(f.f_code.co_filename)
        if kind != 2:
            if inner is None:
                inner = f
            if kind == 0:
                break
        f = f.f_back
    if f is None and inner is None:
        return "<unknown>"
    if f is None or f is inner:
        return _fmt_frame(f or inner)
    return f"{_fmt_frame(f)} (inside {_fmt_frame(inner)})"


# ---------------------------------------------------------------------------
# the one op hook, shared by the tools that are active
# ---------------------------------------------------------------------------

_listeners: List[Callable[..., None]] = []


def _dispatch(kind: str, *args: Any) -> None:
    for fn in list(_listeners):
        fn(kind, *args)


@contextlib.contextmanager
def _listening(fn: Callable[..., None]) -> Iterator[None]:
    _listeners.append(fn)
    _C._set_op_hook(_dispatch)
    try:
        yield
    finally:
        _listeners.remove(fn)
        if not _listeners:
            _C._set_op_hook(None)


# ---------------------------------------------------------------------------
# print options: the course's repr by default, "torch" and "summary" opt-in
# ---------------------------------------------------------------------------

_DEFAULTS: Dict[str, Any] = {"style": "course", "precision": None, "threshold": None,
                             "edgeitems": None, "linewidth": None}
_opts: Dict[str, Any] = dict(_DEFAULTS)
_STYLES = ("course", "torch", "summary")


def get_printoptions() -> Dict[str, Any]:
    """The current print options (a copy).

    >>> import needle as ndl
    >>> ndl.get_printoptions()["style"]
    'course'
    """
    return dict(_opts)


def set_printoptions(style: Optional[str] = None, precision: Optional[int] = None,
                     threshold: Optional[int] = None, edgeitems: Optional[int] = None,
                     linewidth: Optional[int] = None, *, reset: bool = False) -> None:
    """How tensors and arrays print.

    ``style``: ``"course"`` (the default, the course's ``needle.Tensor([...])``),
    ``"torch"`` (``tensor([...], requires_grad=True, grad_fn=<EWiseAdd>)``) or
    ``"summary"`` (one line: shape, dtype, device, min/max/mean, NaN/inf counts). The numeric
    options are NumPy's. ``reset=True`` restores the defaults.

    >>> import needle as ndl
    >>> x = ndl.Tensor([1.0, 2.0], requires_grad=True)
    >>> ndl.set_printoptions(style="torch")
    >>> x + 1
    tensor([2., 3.], requires_grad=True, grad_fn=<AddScalar>)
    >>> ndl.set_printoptions(style="summary")
    >>> x
    Tensor(shape=(2,), dtype=float32, device=cpu(), min=1, max=2, mean=1.5, requires_grad=True)
    >>> ndl.set_printoptions(reset=True)
    >>> x
    needle.Tensor([1. 2.])
    """
    if reset:
        _opts.update(_DEFAULTS)
    if style is not None:
        if style not in _STYLES:
            raise ValueError(f"set_printoptions: style must be one of {_STYLES}, got {style!r}")
        _opts["style"] = style
    for name, v in (("precision", precision), ("threshold", threshold),
                    ("edgeitems", edgeitems), ("linewidth", linewidth)):
        if v is not None:
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"set_printoptions: {name} must be an int >= 0, got {v!r}")
            _opts[name] = v
    custom = any(_opts[k] != _DEFAULTS[k] for k in _DEFAULTS)
    _C._set_repr_hook("repr", _repr_hook if custom else None)


@contextlib.contextmanager
def printoptions(**kw: Any) -> Iterator[None]:
    """``set_printoptions`` for the duration of a ``with`` block.

    >>> import needle as ndl
    >>> with ndl.printoptions(style="torch"):
    ...     print(repr(ndl.Tensor([1.0], requires_grad=False)))
    tensor([1.])
    """
    saved = dict(_opts)
    set_printoptions(**kw)
    try:
        yield
    finally:
        _opts.update(saved)
        set_printoptions()


def _np_opts() -> Dict[str, Any]:
    return {k: _opts[k] for k in ("precision", "threshold", "edgeitems", "linewidth")
            if _opts[k] is not None}


def _stats(a: np.ndarray) -> str:
    if a.size == 0:
        return "empty"
    a = a.astype(np.float64, copy=False)
    finite = a[np.isfinite(a)]
    nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    parts = []
    if finite.size:
        parts.append(f"min={finite.min():.4g}, max={finite.max():.4g}, mean={finite.mean():.4g}")
    if nan or inf:
        parts.append(f"nan={nan}, inf={inf}")
    return ", ".join(parts)


def _describe(obj: Any) -> Tuple[str, List[str]]:
    """(type name, [key=value, ...]) of a Tensor or NDArray."""
    d = _data(obj)
    a = np.asarray(d)
    fields = [f"shape={tuple(a.shape)}", f"dtype={a.dtype}"]
    dev = getattr(obj, "device", None)
    if dev is not None:
        fields.append(f"device={dev}")
    if isinstance(obj, _C.Value):
        return "Tensor", fields
    return "NDArray", fields


def _grad_info(obj: Any) -> List[str]:
    out = []
    if isinstance(obj, _C.Value):
        if obj.requires_grad:
            out.append("requires_grad=True")
        if obj.op is not None:
            out.append(f"grad_fn=<{_op_name(obj.op)}>")
    return out


def _repr_hook(obj: Any, kind: str) -> Optional[str]:
    if kind == "html":
        return _html(obj)
    if isinstance(obj, _C.TensorTuple):
        return None
    style = _opts["style"]
    a = _np(obj)
    name, fields = _describe(obj)
    if style == "summary":
        stats = _stats(a)
        return f"{name}({', '.join(fields + ([stats] if stats else []) + _grad_info(obj))})"
    with np.printoptions(**_np_opts()):
        if style == "course":
            if name == "Tensor":
                return f"needle.Tensor({a})"
            return f"NDArray({a}, device={obj.device})"
        prefix = "tensor(" if name == "Tensor" else "ndarray("
        body = np.array2string(a, separator=", ", prefix=prefix)
    extra = []
    if a.dtype != np.float32:
        extra.append(f"dtype={a.dtype}")
    dev = getattr(obj, "device", None)
    if dev is not None and str(dev) not in ("cpu()", "needle.cpu()"):
        extra.append(f"device={dev}")
    return f"{prefix}{', '.join([body] + extra + _grad_info(obj))})"


_HTML_ROWS, _HTML_COLS = 8, 8


def _html(obj: Any) -> str:
    """Shape, dtype, device, gradient info and a truncated table of values."""
    d = _data(obj)
    if isinstance(d, tuple):
        return "<pre>" + html.escape(repr(obj)) + "</pre>"
    a = np.asarray(d)
    name, fields = _describe(obj)
    head = ", ".join(fields + _grad_info(obj))
    note = ""
    m = a
    if a.ndim > 2:
        m = a[(0,) * (a.ndim - 2)]
        note = f" (showing [{', '.join(['0'] * (a.ndim - 2))}, :, :])"
    m = np.atleast_2d(m) if a.ndim > 0 else m.reshape(1, 1)
    if a.ndim == 1:
        m = m  # one row
    r, c = m.shape
    rows = list(range(min(r, _HTML_ROWS)))
    cols = list(range(min(c, _HTML_COLS)))
    cell = "<td style='text-align:right;font-family:monospace'>{}</td>"
    lines = []
    for i in rows:
        tds = "".join(cell.format(f"{m[i, j]:.4g}") for j in cols)
        if c > len(cols):
            tds += cell.format("&hellip;")
        lines.append(f"<tr>{tds}</tr>")
    if r > len(rows):
        lines.append("<tr>" + cell.format("&vellip;") * (len(cols) + (c > len(cols))) + "</tr>")
    stats = _stats(a)
    return (f"<div><b>{name}</b> <code>{html.escape(head)}</code>{html.escape(note)}"
            f"<table style='border-collapse:collapse'>{''.join(lines)}</table>"
            f"<small>{html.escape(stats)}</small></div>")


_C._set_repr_hook("html", _repr_hook)


# ---------------------------------------------------------------------------
# gradcheck
# ---------------------------------------------------------------------------

class GradcheckError(AssertionError):
    """Raised by ``gradcheck`` when analytic and numeric gradients disagree."""


def _f64_leaf(x: Any, requires_grad: bool = True) -> Tensor:
    return Tensor(np.array(_np(x) if isinstance(x, _C.Value) else x, dtype=np.float64),
                  dtype="float64", requires_grad=requires_grad)


def _compare(fn: Callable[..., Any], arrays: List[np.ndarray], eps: float, atol: float,
             rtol: float, max_checks: int, rng: np.random.Generator) -> Optional[Dict[str, Any]]:
    """None when fn's gradients match central differences, else the worst element."""
    leaves = [_f64_leaf(a) for a in arrays]
    out = fn(*leaves)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    shape = _shape(out)
    w = rng.standard_normal(shape) if shape else np.ones(())  # a scalar output as it is
    out.backward(Tensor(w, dtype="float64"))

    def loss(xs: List[np.ndarray]) -> float:
        with no_grad():
            o = fn(*[_f64_leaf(x, requires_grad=False) for x in xs])
        return float((_np(o).astype(np.float64) * w).sum())

    worst: Optional[Dict[str, Any]] = None
    for i, (a, leaf) in enumerate(zip(arrays, leaves)):
        g = leaf.grad
        analytic = np.zeros(a.shape) if g is None else _np(g).astype(np.float64)
        if analytic.shape != a.shape:
            raise GradcheckError(f"gradcheck: the gradient of input {i} has shape "
                                 f"{analytic.shape}, the input {a.shape}")
        flat = np.arange(a.size)
        if a.size > max_checks:
            flat = rng.choice(a.size, max_checks, replace=False)
        for j in flat:
            idx = np.unravel_index(j, a.shape) if a.ndim else ()
            xs = [x.copy() for x in arrays]
            xs[i][idx] += eps
            up = loss(xs)
            xs[i][idx] -= 2 * eps
            numeric = (up - loss(xs)) / (2 * eps)
            an = float(analytic[idx])
            err = abs(an - numeric)
            score = err / (atol + rtol * abs(numeric))
            if score > 1 and (worst is None or score > worst["score"]):
                worst = {"input": i, "index": tuple(int(k) for k in idx), "analytic": an,
                         "numeric": numeric, "error": err, "score": score}
    if worst is not None:
        worst["out"] = out
    return worst


def _culprit(out: Tensor, eps: float, atol: float, rtol: float,
             rng: np.random.Generator) -> Optional[str]:
    """The first op, in forward order, whose own gradient disagrees with finite differences
    at the inputs it saw."""
    for node in find_topo_sort([out]):
        if node.op is None or not isinstance(node, Tensor):
            continue
        op = node.op
        arrays = [_np(x).astype(np.float64) for x in node.inputs]
        try:
            bad = _compare(lambda *xs: op(*xs), arrays, eps, atol, rtol, 64, rng)
        except Exception:  # an op that cannot be replayed on float64 leaves: not checked
            continue
        if bad is not None:
            shapes = ", ".join(str(a.shape) for a in arrays)
            where = getattr(node, "_created_at", None)
            return (f"{_op_name(op)} (inputs of shapes {shapes}"
                    + (f", created at {where}" if where else "") + "): its input "
                    f"{bad['input']}, element {bad['index']}: analytic {bad['analytic']:.6g}, "
                    f"numeric {bad['numeric']:.6g}")
    return None


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Any], *, eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-3, max_checks: int = 1000, seed: int = 0,
              raise_exception: bool = True) -> bool:
    """Check fn's gradients against float64 central differences.

    ``inputs`` are arrays or Tensors; each is copied to a float64 leaf. A non-scalar output is
    reduced with fixed random weights. On a mismatch, the error names the worst element (input,
    index, analytic and numeric values) and the op it came from: the first op of the graph,
    in forward order, whose own gradient disagrees at the values it saw. Inputs larger than
    ``max_checks`` elements are checked at that many random elements.

    >>> import numpy as np, needle as ndl
    >>> class BadSquare(ndl.TensorOp):
    ...     def compute(self, a):
    ...         return a * a
    ...     def gradient(self, out_grad, node):
    ...         return out_grad * node.inputs[0]          # should be 2 * x
    >>> ndl.gradcheck(lambda x: BadSquare()(x).exp(), [np.array([0.5, 1.0])],
    ...               raise_exception=False)
    False
    """
    rng = np.random.default_rng(seed)
    arrays = [np.array(_np(x) if isinstance(x, _C.Value) else x, dtype=np.float64)
              for x in inputs]
    worst = _compare(fn, arrays, eps, atol, rtol, max_checks, rng)
    if worst is None:
        return True
    if not raise_exception:
        return False
    culprit = _culprit(worst["out"], eps, atol, rtol, rng)
    msg = (f"gradcheck: gradients differ; worst at input {worst['input']} "
           f"(shape {arrays[worst['input']].shape}), element {worst['index']}: "
           f"analytic {worst['analytic']:.6g}, numeric {worst['numeric']:.6g} "
           f"(|diff| {worst['error']:.3g}, atol {atol}, rtol {rtol}).\n")
    msg += (f"The op it came from: {culprit}" if culprit else
            "Every op's own gradient matches at the values it saw: check how the ops are "
            "combined (a detached tensor, a gradient that flows around an op).")
    raise GradcheckError(msg)


# ---------------------------------------------------------------------------
# detect_anomaly
# ---------------------------------------------------------------------------

class AnomalyError(FloatingPointError):
    """Raised inside ``detect_anomaly()`` when an op or a gradient makes NaN or inf."""


def _bad_counts(x: Any) -> Tuple[int, int]:
    d = _data(x) if x is not None else None
    if d is None:
        return 0, 0
    if isinstance(d, tuple):
        nan = inf = 0
        for e in d:
            a, b = _bad_counts(e)
            nan, inf = nan + a, inf + b
        return nan, inf
    a = np.asarray(d)
    if a.dtype.kind != "f" or np.isfinite(a).all():
        return 0, 0
    return int(np.isnan(a).sum()), int(np.isinf(a).sum())


def _input_shapes(inputs: Sequence[Any]) -> str:
    return ", ".join(str(_shape(x)) for x in inputs) or "none"


class detect_anomaly(contextlib.ContextDecorator):
    """Check every forward and backward result for NaN and inf; raise naming the op.

    Inside the block, the first op whose output has NaN or inf raises ``AnomalyError``
    naming the op, its input shapes and the Python line that created it; in ``backward``,
    the first gradient rule that returns NaN or inf does the same, with the line where that
    op was created in the forward pass. Slow (it looks at every array): a debugging aid.

    >>> import needle as ndl
    >>> x = ndl.Tensor([1.0, 0.0], requires_grad=True)
    >>> with ndl.detect_anomaly():
    ...     y = x.log().sum()
    Traceback (most recent call last):
    ...
    needle.tools.AnomalyError: detect_anomaly: Log made 1 inf (output of shape (2,)) ...
    """

    def __enter__(self) -> "detect_anomaly":
        self._cm = _listening(self._check)
        self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)

    @staticmethod
    def _check(kind: str, *args: Any) -> None:
        if kind == "forward":
            op, inputs, out, _, depth = args
            if depth:
                return  # an op inside a gradient rule: the rule's result is checked
            nan, inf = _bad_counts(out)
            where = _where() if nan or inf or out.op is not None else ""
            if out.op is not None:
                out._created_at = where
            if nan or inf:
                ins = [_bad_counts(x) for x in inputs]
                already = [i for i, c in enumerate(ins) if c[0] or c[1]]
                what = " and ".join(f"{n} {s}" for n, s in ((nan, "NaN"), (inf, "inf")) if n)
                note = (f"; its input(s) {already} already had NaN/inf" if already else "")
                raise AnomalyError(
                    f"detect_anomaly: {_op_name(op)} made {what} (output of shape "
                    f"{_shape(out)}) from inputs of shapes {_input_shapes(inputs)}, at "
                    f"{where}{note}")
        else:
            op, node, out_grad, grads, _ = args
            for i, g in enumerate(grads):
                nan, inf = _bad_counts(g)
                if nan or inf:
                    what = " and ".join(f"{n} {s}" for n, s in ((nan, "NaN"), (inf, "inf"))
                                        if n)
                    created = getattr(node, "_created_at", "an unknown line (made outside "
                                      "detect_anomaly)")
                    raise AnomalyError(
                        f"detect_anomaly: the gradient of {_op_name(op)} for its input {i} has "
                        f"{what} (gradient of shape {_shape(g)}; the op's inputs have shapes "
                        f"{_input_shapes(node.inputs)}); the op was created at {created}")


# ---------------------------------------------------------------------------
# profile
# ---------------------------------------------------------------------------

_VIEW_OPS = {"Reshape", "BroadcastTo", "Transpose", "Permute", "TupleGetItem",
             "MakeTensorTuple"}
_NO_FLOP_OPS = _VIEW_OPS | {"Flip", "Dilate", "UnDilate", "Stack", "Split", "GatherRows",
                            "ScatterRows"}
_REDUCTIONS = {"Summation", "Max", "LogSumExp", "LogSoftmax"}


def op_flops(op: Any, inputs: Sequence[Any], out: Any) -> int:
    """The FLOPs the profiler counts for op(inputs) = out.

    MatMul ``(..., m, k) @ (..., k, n)``: ``2 m k n`` per batch element; the fused Linear
    ``x @ W + b`` and AttentionProbs ``softmax(q @ k^T / c)`` add one per output element.
    Conv (NHWC input, ``(K, K, C_in, C_out)`` weight): ``2 N H_out W_out C_out K K C_in``.
    Elementwise ops: one per output element; reductions: one per input element; shape and
    copy ops: none.

    >>> import needle as ndl
    >>> a, b = ndl.init.ones(4, 3), ndl.init.ones(3, 5)
    >>> op_flops(ndl.ops.MatMul(), [a, b], a @ b)
    120
    """
    name = _op_name(op)
    if name in _NO_FLOP_OPS:
        return 0
    if name in ("MatMul", "Linear", "AttentionProbs"):  # the fused ones: the product, then
        fused = name != "MatMul"                           # the bias add / the scaled softmax
        return (2 * int(_shape(inputs[0])[-1]) + fused) * math.prod(_shape(out))
    if name == "Conv":  # a transposed conv (an input gradient) reads (N, Ho, Wo, C_out)
        w = _shape(inputs[1])
        rows = _shape(inputs[0]) if getattr(op, "transposed", False) else _shape(out)
        return 2 * math.prod(rows) * int(w[0] * w[1] * w[2])
    if name in _REDUCTIONS:
        return math.prod(_shape(inputs[0]))
    d = _data(out)
    if isinstance(d, tuple):
        return sum(math.prod(_shape(e)) for e in d)
    return math.prod(d.shape)


def op_bytes(op: Any, inputs: Sequence[Any], out: Any) -> int:
    """Bytes read and written: the inputs' and the output's; views move none."""
    if _op_name(op) in _VIEW_OPS:
        return 0
    return sum(_nbytes(x) for x in inputs) + _nbytes(out)


_PEAK: Optional[Tuple[float, float]] = None


def machine_peak() -> Tuple[float, float]:
    """(FLOP/s, bytes/s) this machine reaches: best of 5 float32 512x512 matmuls with needle's
    kernels, best of 5 adds of two 4M-element arrays. Measured once per process."""
    global _PEAK
    if _PEAK is None:
        from .backend_ndarray import array
        rng = np.random.default_rng(0)
        a = array(rng.standard_normal((512, 512)).astype(np.float32))
        x = array(rng.standard_normal(1 << 22).astype(np.float32))
        best_mm = best_add = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            a @ a
            best_mm = min(best_mm, time.perf_counter() - t)
            t = time.perf_counter()
            x + x
            best_add = min(best_add, time.perf_counter() - t)
        _PEAK = (2 * 512 ** 3 / best_mm, 3 * 4 * (1 << 22) / best_add)
    return _PEAK


class Profile:
    """What ``profile()`` measured: rows per (op, phase) with calls, seconds, FLOPs, bytes."""

    def __init__(self) -> None:
        self.rows: Dict[Tuple[str, str], List[float]] = {}
        self._pending = [0, 0]  # FLOPs, bytes of ops computed inside the running gradient rule
        self.peak: Tuple[float, float] = (0.0, 0.0)

    def _add(self, name: str, phase: str, sec: float, flops: int, nbytes: int) -> None:
        r = self.rows.setdefault((name, phase), [0, 0.0, 0, 0])
        r[0] += 1
        r[1] += sec
        r[2] += flops
        r[3] += nbytes

    def _record(self, kind: str, *args: Any) -> None:
        if kind == "forward":
            op, inputs, out, sec, depth = args
            f, b = op_flops(op, inputs, out), op_bytes(op, inputs, out)
            if depth:
                self._pending[0] += f
                self._pending[1] += b
            else:
                self._add(_op_name(op), "forward", sec, f, b)
        else:
            op, _, _, _, sec = args
            self._add(_op_name(op), "backward", sec, *self._pending)
            self._pending = [0, 0]

    def table_rows(self) -> List[Dict[str, Any]]:
        """One dict per (op, phase), slowest first."""
        pf, pb = self.peak
        total = sum(r[1] for r in self.rows.values()) or 1.0
        out = []
        for (name, phase), (calls, sec, flops, nbytes) in sorted(
                self.rows.items(), key=lambda kv: -kv[1][1]):
            fr = flops / sec if sec > 0 else 0.0
            br = nbytes / sec if sec > 0 else 0.0
            out.append({"op": name, "phase": phase, "calls": int(calls), "ms": sec * 1e3,
                        "%time": 100 * sec / total, "MFLOP": flops / 1e6,
                        "GFLOP/s": fr / 1e9, "MB": nbytes / 1e6, "GB/s": br / 1e9,
                        "%peak": 100 * max(fr / pf if pf else 0.0, br / pb if pb else 0.0)})
        return out

    _COLS = [("op", "{}"), ("phase", "{}"), ("calls", "{}"), ("ms", "{:.3f}"),
             ("%time", "{:.1f}"), ("MFLOP", "{:.3f}"), ("GFLOP/s", "{:.2f}"), ("MB", "{:.3f}"),
             ("GB/s", "{:.2f}"), ("%peak", "{:.1f}")]

    def table(self) -> str:
        """A plain-text table; %peak is the larger of the FLOP/s and bytes/s fractions of
        ``machine_peak()``."""
        cells = [[c for c, _ in self._COLS]]
        for r in self.table_rows():
            cells.append([f.format(r[c]) for c, f in self._COLS])
        widths = [max(len(row[i]) for row in cells) for i in range(len(self._COLS))]
        lines = ["  ".join(s.ljust(w) if i < 2 else s.rjust(w)
                           for i, (s, w) in enumerate(zip(row, widths))) for row in cells]
        lines.insert(1, "-" * len(lines[0]))
        pf, pb = self.peak
        lines.append(f"peak: {pf / 1e9:.1f} GFLOP/s (float32 matmul), {pb / 1e9:.1f} GB/s (add)")
        return "\n".join(lines)

    __str__ = table

    def __repr__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in self._COLS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(f.format(r[c]))}</td>"
                                        for c, f in self._COLS) + "</tr>"
                       for r in self.table_rows())
        return f"<table><tr>{head}</tr>{body}</table>"


@contextlib.contextmanager
def profile(peak: bool = True) -> Iterator[Profile]:
    """Time every op's forward and gradient rule; count FLOPs and bytes.

    The backward row of an op sums the ops its gradient rule computed. The sums of the
    gradients reaching a tensor used more than once are computed by the backward walk
    itself, outside any rule: they show as forward ``EWiseAdd`` rows. ``peak=False`` skips
    measuring the machine's peak (%peak then reads 0).

    >>> import needle as ndl
    >>> a = ndl.init.ones(8, 4, requires_grad=True)
    >>> with ndl.profile(peak=False) as prof:
    ...     (a @ a.transpose()).sum().backward()
    >>> [(r["phase"], r["calls"], r["MFLOP"]) for r in prof.table_rows() if r["op"] == "MatMul"]
    [('backward', 1, 0.001024), ('forward', 1, 0.000512)]
    >>> print(prof)  # doctest: +ELLIPSIS
    op phase calls ms %time MFLOP GFLOP/s MB GB/s %peak
    ...
    """
    prof = Profile()
    if peak:
        prof.peak = machine_peak()
    with _listening(prof._record):
        yield prof
