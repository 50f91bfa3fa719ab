"""needle.interop: PyTorch weights both ways, and DLPack.

needle never imports torch: the conversions work on arrays. A torch state dict
(or any mapping of names to torch tensors, NumPy arrays, needle Tensors)
converts into a needle module whose attribute names mirror the torch model's,
and back:

>>> needle_model.load_state_dict(...)      # needle names and layouts
>>> from_torch_state_dict(needle_model, torch_model.state_dict())
>>> sd = to_torch_state_dict(needle_model)   # {torch name: np.ndarray}
>>> torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})

The layouts that differ (README, "Weights from and to PyTorch"):

| needle module | torch module | needle -> torch |
|---|---|---|
| Linear | nn.Linear | weight (in, out) -> (out, in) transposed; bias (1, out) -> (out,) |
| Conv | nn.Conv2d(padding=K//2) | weight (K, K, I, O) -> (O, I, K, K) |
| BatchNorm1d/2d | nn.BatchNorm1d/2d | same; torch's num_batches_tracked added (0) / ignored |
| LayerNorm1d | nn.LayerNorm | same |
| Embedding | nn.Embedding | same |
| RNNCell, LSTMCell | nn.RNNCell, nn.LSTMCell | W_ih (in, G) -> weight_ih (G, in), W_hh likewise |
| RNN, LSTM | nn.RNN, nn.LSTM | rnn_cells.{l}.W_ih -> weight_ih_l{l} transposed, ... |
| TransformerLayer | nn.TransformerEncoderLayer | q/k/v projections -> in_proj_weight |
|   | (norm_first=True, | (3F, F), transposed and stacked; prenorm_q/k/v (equal) |
|   | batch_first=True) | -> norm1; layernorm -> norm2; attention biases zero |

Modules not in the table keep their names and layouts. The table is
`TORCH_LAYOUTS` (class -> rows); `register_torch_layout` adds a row set.

`from_dlpack(x)` takes any DLPack producer (a NumPy array, a torch tensor, an
NDArray) and returns a needle Tensor over the same memory (no copy).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np

from needle import nn
from needle.autograd import Tensor
from needle.backend_ndarray import NDArray
from needle.backend_selection import BACKEND
from needle.nn.nn_basic import _as_numpy

__all__ = ["from_torch_state_dict", "to_torch_state_dict", "register_torch_layout",
           "TORCH_LAYOUTS", "from_dlpack", "ndarray_from_dlpack"]

Array = np.ndarray


class Row(NamedTuple):
    """One torch tensor of a module: its needle name(s) and torch name (local to the
    module), needle -> torch and torch -> needle conversions of the arrays.

    `needle` is a name (to_torch(a) -> array, to_needle(t) -> array), a tuple of
    names (to_torch(*arrays) -> array, to_needle(t) -> tuple of arrays: torch's
    packed in_proj_weight from three projections), or None for a torch-only tensor
    (to_torch() makes its value; to_needle(t) checks it and returns None: BatchNorm's
    num_batches_tracked, attention biases needle does not have). A conversion that
    would lose information raises ValueError."""
    needle: Union[str, Tuple[str, ...], None]
    torch: str
    to_torch: Callable[..., Array]
    to_needle: Callable[[Array], Any]

    def names(self) -> Tuple[str, ...]:
        if self.needle is None:
            return ()
        return (self.needle,) if isinstance(self.needle, str) else tuple(self.needle)


def _same(a: Array) -> Array:
    return a


def _t(a: Array) -> Array:
    return a.T


def _linear_rows(m: "nn.Linear") -> List[Row]:
    rows = [Row("weight", "weight", _t, _t)]
    if m.bias is not None:
        shape = tuple(m.bias.shape)
        rows.append(Row("bias", "bias", lambda a: a.reshape(-1), lambda a: a.reshape(shape)))
    return rows


def _conv_rows(m: Any) -> List[Row]:
    # needle (K, K, I, O)[kh, kw, i, o] == torch (O, I, K, K)[o, i, kh, kw]
    rows = [Row("weight", "weight", lambda a: a.transpose(3, 2, 0, 1),
                lambda a: a.transpose(2, 3, 1, 0))]
    if m.bias is not None:
        rows.append(Row("bias", "bias", _same, _same))
    return rows


def _batchnorm_rows(m: Any) -> List[Row]:
    rows = [Row(n, n, _same, _same) for n in ("weight", "bias", "running_mean", "running_var")]
    rows.append(Row(None, "num_batches_tracked", lambda: np.array(0, dtype=np.int64),
                    lambda t: None))
    return rows


def _plain_rows(*names: str) -> Callable[[Any], List[Row]]:
    return lambda m: [Row(n, n, _same, _same) for n in names]


def _cell_rows(prefix: str, suffix: str, bias: bool) -> List[Row]:
    rows = [Row(prefix + "W_ih", "weight_ih" + suffix, _t, _t),
            Row(prefix + "W_hh", "weight_hh" + suffix, _t, _t)]
    if bias:
        rows += [Row(prefix + "bias_ih", "bias_ih" + suffix, _same, _same),
                 Row(prefix + "bias_hh", "bias_hh" + suffix, _same, _same)]
    return rows


def _single_cell_rows(m: Any) -> List[Row]:
    return _cell_rows("", "", m.bias_ih is not None)


def _stack_rows(attr: str) -> Callable[[Any], List[Row]]:
    def rows(m: Any) -> List[Row]:
        return [r for layer, cell in enumerate(getattr(m, attr))
                for r in _cell_rows(f"{attr}.{layer}.", f"_l{layer}", cell.bias_ih is not None)]
    return rows


def _all_equal(what: str) -> Callable[..., Array]:
    """needle -> torch for one torch tensor that several needle tensors must share."""
    def to_torch(*arrays: Array) -> Array:
        if any(a.shape != arrays[0].shape or not np.array_equal(a, arrays[0])
               for a in arrays[1:]):
            raise ValueError(f"{what}: torch has one tensor where needle's differ")
        return arrays[0]
    return to_torch


def _zero(shape: Tuple[int, ...], what: str) -> Tuple[Callable[[], Array], Callable]:
    """A torch-only bias needle does not have: written as zeros, must come in zero."""
    def to_needle(t: Array) -> None:
        if np.any(t != 0):
            raise ValueError(f"{what} is not zero: needle's layer has no such bias, "
                             "so it would be lost")
    return (lambda: np.zeros(shape, np.float32)), to_needle


def _transformer_layer_rows(m: Any) -> List[Row]:
    """TransformerLayer <-> torch.nn.TransformerEncoderLayer(d_model=F, nhead=H,
    dim_feedforward=hidden, dropout=0, batch_first=True, norm_first=True) with its
    attention biases zero; the three pre-norms of needle's attention share torch's
    norm1 (equal weights), and q/k/v projections pack into in_proj_weight."""
    a = m.attention
    f = a.q_features
    if not (a.k_features == a.v_features == a.out_features == f == a.num_head * a.dim_head):
        raise ValueError(f"{type(m).__name__}: torch's TransformerEncoderLayer needs "
                         "q/k/v/out features == num_head * dim_head, got "
                         f"{(a.q_features, a.k_features, a.v_features, a.out_features)} and "
                         f"{a.num_head} * {a.dim_head}")
    norms = tuple(f"attention.prenorm_{x}" for x in "qkv")
    projections = tuple(f"attention.{x}_projection.weight" for x in "qkv")
    in_bias = _zero((3 * f,), "self_attn.in_proj_bias")
    out_bias = _zero((f,), "self_attn.out_proj.bias")
    # in torch's order: self_attn, linear1, linear2, norm1, norm2
    rows = [Row(projections, "self_attn.in_proj_weight",
                lambda q, k, v: np.concatenate([q.T, k.T, v.T]),
                lambda t: tuple(x.T for x in np.split(t, 3))),
            Row(None, "self_attn.in_proj_bias", *in_bias),
            Row("attention.out_projection.weight", "self_attn.out_proj.weight", _t, _t),
            Row(None, "self_attn.out_proj.bias", *out_bias)]
    rows += [Row(f"{lin}.{r.needle}", f"{lin}.{r.torch}", r.to_torch, r.to_needle)
             for lin in ("linear1", "linear2") for r in _linear_rows(getattr(m, lin))]
    rows += [Row(tuple(f"{n}.{p}" for n in norms), f"norm1.{p}",
                 _all_equal(f"attention.prenorm_q/k/v.{p}"), lambda t: (t, t, t))
             for p in ("weight", "bias")]
    rows += [Row(f"layernorm.{p}", f"norm2.{p}", _same, _same) for p in ("weight", "bias")]
    return rows


TORCH_LAYOUTS: Dict[type, Callable[[Any], List[Row]]] = {
    nn.Linear: _linear_rows,
    nn.Conv: _conv_rows,
    nn.BatchNorm1d: _batchnorm_rows,   # BatchNorm2d too (a subclass)
    nn.LayerNorm1d: _plain_rows("weight", "bias"),
    nn.Embedding: _plain_rows("weight"),
    nn.RNNCell: _single_cell_rows,
    nn.LSTMCell: _single_cell_rows,
    nn.RNN: _stack_rows("rnn_cells"),
    nn.LSTM: _stack_rows("lstm_cells"),
}
if hasattr(nn, "TransformerLayer"):  # issue 9's modules, once merged
    TORCH_LAYOUTS[nn.TransformerLayer] = _transformer_layer_rows


def register_torch_layout(cls: type, rows: Callable[[Any], List[Row]]) -> None:
    """Convert every instance of cls (and of its subclasses) with rows(module): the
    module's tensors, its submodules' included, as Row(needle, torch, ...) entries."""
    TORCH_LAYOUTS[cls] = rows


def _rows_for(m: "nn.Module") -> Optional[Callable[[Any], List[Row]]]:
    for cls in type(m).__mro__:
        if cls in TORCH_LAYOUTS:
            return TORCH_LAYOUTS[cls]
    return None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _plan(module: "nn.Module") -> List[Tuple[Row, Tuple[Tensor, ...]]]:
    """Every row of module with full names, and the current needle values."""
    current = module._state_owners()
    plan: List[Tuple[Row, Tuple[Tensor, ...]]] = []
    covered: List[str] = []
    for prefix, m in module.named_modules():
        if any(c == "" or prefix == c or prefix.startswith(c + ".") for c in covered):
            continue
        fn = _rows_for(m)
        if fn is not None:
            covered.append(prefix)
            rows = fn(m)
        else:
            own = [k for k, _ in m._named_attrs(prefix, False) if k in current]
            own += [_join(prefix, n) for n, _ in m._own_buffers(True)]
            local = [k[len(prefix) + 1:] if prefix else k for k in own]
            rows = [Row(k, k, _same, _same) for k in local]
        for r in rows:
            names = r.names()
            full = tuple(_join(prefix, n) for n in names)
            needle = None if r.needle is None else full[0] if isinstance(r.needle, str) else full
            plan.append((Row(needle, _join(prefix, r.torch), r.to_torch, r.to_needle),
                         tuple(current[n][2] for n in full)))
    return plan


def to_torch_state_dict(module: "nn.Module") -> "OrderedDict[str, Array]":
    """{torch name: NumPy array} in torch's layouts, ready for torch's
    load_state_dict after torch.from_numpy."""
    out: "OrderedDict[str, Array]" = OrderedDict()
    for row, values in _plan(module):
        arr = np.asarray(row.to_torch(*(v.numpy() for v in values)))
        out[row.torch] = arr if arr.flags.c_contiguous else arr.copy(order="C")  # 0-d stays
    return out


def from_torch_state_dict(module: "nn.Module", state_dict: Mapping[str, Any],
                          strict: bool = True):
    """Load a torch state dict (torch names and layouts; tensors or arrays) into
    module, converting the layouts of TORCH_LAYOUTS. Errors as in
    Module.load_state_dict, in torch's names and shapes; returns (missing_keys,
    unexpected_keys) in torch's names."""
    converted: Dict[str, Array] = {}
    errors: List[str] = []
    missing: List[str] = []
    seen = set()
    for row, values in _plan(module):
        if row.torch not in state_dict:
            if row.needle is not None:
                missing.append(row.torch)
            continue
        seen.add(row.torch)
        given = _as_numpy(state_dict[row.torch])
        expected = row.to_torch(*(v.numpy() for v in values)).shape
        if tuple(given.shape) != tuple(expected):
            errors.append(f"size mismatch for {row.torch}: copying a param with shape "
                          f"{tuple(given.shape)} from checkpoint, the shape in current model "
                          f"is {tuple(expected)}.")
            continue
        out = row.to_needle(given)
        if row.needle is None:
            continue
        outs = (out,) if isinstance(row.needle, str) else tuple(out)
        for name, arr in zip(row.names(), outs, strict=True):
            converted[name] = arr
    unexpected = [k for k in state_dict if k not in seen]
    nn.nn_basic._raise_load_errors(module, errors, missing, unexpected, strict)
    module.load_state_dict(converted, strict=False)
    return nn.nn_basic._IncompatibleKeys(missing, unexpected)


# ---- DLPack ------------------------------------------------------------------

_HOST_DEVICES = (1, 3)  # kDLCPU, kDLCUDAHost


def ndarray_from_dlpack(x: Any) -> NDArray:
    """An NDArray over the memory of DLPack producer x (zero-copy; a read-only
    producer is copied, as the DLPack spec asks of a consumer that writes)."""
    if type(x).__name__ == "PyCapsule":
        return NDArray._from_dlpack_capsule(x)
    if not hasattr(x, "__dlpack__"):
        raise TypeError(f"from_dlpack: {type(x).__name__} does not implement __dlpack__")
    if isinstance(x, Tensor):
        x = x.realize_cached_data()
    try:
        # NOTE: asking for the CPU without a copy spares a __dlpack_device__ call
        # (torch's costs more than the hand-over); a producer elsewhere refuses.
        capsule = x.__dlpack__(stream=None, max_version=(1, 0), dl_device=(1, 0), copy=False)
    except TypeError:  # a producer older than DLPack 1.0's Python keywords
        device = tuple(x.__dlpack_device__())
        if device[0] not in _HOST_DEVICES:
            raise BufferError(f"from_dlpack: needle's NDArray takes CPU memory; the "
                              f"{type(x).__name__} is on DLPack device {device}") from None
        capsule = x.__dlpack__()
    except BufferError as err:
        raise BufferError(f"from_dlpack: needle's NDArray takes CPU memory; the "
                          f"{type(x).__name__} is on DLPack device "
                          f"{tuple(x.__dlpack_device__())} and cannot be exported to the CPU "
                          f"without a copy ({err})") from None
    return NDArray._from_dlpack_capsule(capsule)


def from_dlpack(x: Any, requires_grad: bool = False) -> Tensor:
    """A Tensor over the memory of DLPack producer x (NumPy, torch, needle), as
    torch.from_dlpack: writes through one are seen through the other.

    >>> t = ndl.from_dlpack(np.ones((2, 3), dtype=np.float32))
    """
    if BACKEND == "np":
        data = np.from_dlpack(x.realize_cached_data() if isinstance(x, Tensor) else x)
    else:
        data = ndarray_from_dlpack(x)
    return Tensor.make_const(data, requires_grad=requires_grad)
