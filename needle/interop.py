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

Modules not in the table keep their names and layouts. The table is
`TORCH_LAYOUTS` (class -> rows); `register_torch_layout` adds a row set.

`from_dlpack(x)` takes any DLPack producer (a NumPy array, a torch tensor, an
NDArray) and returns a needle Tensor over the same memory (no copy).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from needle import nn
from needle.autograd import Tensor
from needle.backend_ndarray import NDArray
from needle.backend_selection import BACKEND

__all__ = ["from_torch_state_dict", "to_torch_state_dict", "register_torch_layout",
           "TORCH_LAYOUTS", "from_dlpack", "ndarray_from_dlpack"]

Array = np.ndarray


class Row(NamedTuple):
    """One tensor of a module: its needle name and torch name (local to the module),
    needle -> torch and torch -> needle conversions of the array. A row without a
    needle name is torch-only: to_torch makes its value from nothing and the torch
    value is ignored on the way in (BatchNorm's num_batches_tracked)."""
    needle: Optional[str]
    torch: str
    to_torch: Callable[[Array], Array]
    to_needle: Callable[[Array], Array]


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
    rows.append(Row(None, "num_batches_tracked", lambda a: np.array(0, dtype=np.int64), _same))
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


def _plan(module: "nn.Module") -> List[Tuple[Row, Optional[Tensor]]]:
    """Every row of module with full names, and the current needle value."""
    current = module._state_owners()
    plan: List[Tuple[Row, Optional[Tensor]]] = []
    covered: List[str] = []
    for prefix, m in module.named_modules():
        if any(prefix == c or prefix.startswith(c + ".") or c == "" for c in covered):
            continue
        fn = _rows_for(m)
        if fn is not None:
            covered.append(prefix)
            rows = fn(m)
        else:
            own = [k for k, _ in m._named_attrs(prefix, False) if k in current]
            own += [_join(prefix, n) for n, _ in m._own_buffers(True)]
            rows = [Row(k[len(prefix) + 1:] if prefix else k, k[len(prefix) + 1:] if prefix
                        else k, _same, _same) for k in own]
        for r in rows:
            full = Row(None if r.needle is None else _join(prefix, r.needle),
                       _join(prefix, r.torch), r.to_torch, r.to_needle)
            plan.append((full, None if full.needle is None else current[full.needle][2]))
    return plan


def _as_numpy(value: Any) -> Array:
    if isinstance(value, (Tensor, NDArray)):
        return value.numpy()
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, duck-typed
        value = value.detach().cpu()
    return np.asarray(value)


def to_torch_state_dict(module: "nn.Module") -> "OrderedDict[str, Array]":
    """{torch name: NumPy array} in torch's layouts, ready for torch's
    load_state_dict after torch.from_numpy."""
    out: "OrderedDict[str, Array]" = OrderedDict()
    for row, value in _plan(module):
        data = np.zeros(()) if value is None else value.numpy()
        out[row.torch] = np.ascontiguousarray(row.to_torch(data))
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
    for row, value in _plan(module):
        if row.torch not in state_dict:
            if row.needle is not None:
                missing.append(row.torch)
            continue
        seen.add(row.torch)
        if row.needle is None:
            continue
        given = _as_numpy(state_dict[row.torch])
        expected = row.to_torch(value.numpy()).shape
        if tuple(given.shape) != tuple(expected):
            errors.append(f"size mismatch for {row.torch}: copying a param with shape "
                          f"{tuple(given.shape)} from checkpoint, the shape in current model "
                          f"is {tuple(expected)}.")
            continue
        converted[row.needle] = row.to_needle(given)
    unexpected = [k for k in state_dict if k not in seen]
    if strict:
        if unexpected:
            errors.insert(0, "Unexpected key(s) in state_dict: "
                          + ", ".join(f'"{k}"' for k in unexpected) + ". ")
        if missing:
            errors.insert(0, "Missing key(s) in state_dict: "
                          + ", ".join(f'"{k}"' for k in missing) + ". ")
    if errors:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(module).__name__}:\n\t"
                           + "\n\t".join(errors))
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
    device = tuple(x.__dlpack_device__())
    if device[0] not in _HOST_DEVICES:
        raise BufferError(f"from_dlpack: needle's NDArray lives on the CPU; the producer is on "
                          f"DLPack device {device} (type {device[0]})")
    try:
        capsule = x.__dlpack__(stream=None, max_version=(1, 0))
    except TypeError:  # a producer older than DLPack 1.0's Python protocol
        capsule = x.__dlpack__()
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
