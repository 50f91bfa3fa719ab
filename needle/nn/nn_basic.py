"""needle.nn basic modules (API.md 6.1-6.4).

Modules are plain Python over tensor ops: each forward below is a few op
calls, each of which is one C call. Construction order is the order of the
random draws, so seeded models reproduce the course's numbers.

>>> import needle as ndl
>>> model = ndl.nn.Sequential(ndl.nn.Linear(4, 8), ndl.nn.ReLU(), ndl.nn.Linear(8, 2))
>>> model(ndl.Tensor([[1.0, 2.0, 3.0, 4.0]])).shape
(1, 2)
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from needle import init, ops
from needle.autograd import Tensor
from needle.backend_selection import BACKEND, cpu

__all__ = [
    "Parameter", "Module", "Identity", "Linear", "Flatten", "ReLU", "Sigmoid", "Tanh",
    "Sequential", "Residual", "SoftmaxLoss", "LayerNorm1d", "BatchNorm1d", "BatchNorm2d",
    "Dropout",
]


class Parameter(Tensor):
    """A Tensor that is a module's trainable parameter (a marker subclass).

    >>> import needle as ndl
    >>> isinstance(ndl.nn.Linear(2, 3).weight, ndl.nn.Parameter)
    True
    """


def _unpack_params(value: Any) -> List[Tensor]:
    if isinstance(value, Parameter):
        return [value]
    if isinstance(value, Module):
        return value.parameters()
    if isinstance(value, dict):
        return [p for v in value.values() for p in _unpack_params(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _unpack_params(v)]
    return []


def _child_modules(value: Any) -> List["Module"]:
    if isinstance(value, Module):
        return [value] + _child_modules(value.__dict__)
    if isinstance(value, dict):
        return [m for v in value.values() for m in _child_modules(v)]
    if isinstance(value, (list, tuple)):
        return [m for v in value for m in _child_modules(v)]
    return []


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _named_items(value: Any, name: str, into_modules: bool) -> Iterator[Tuple[str, Any]]:
    """(dotted name, Parameter or Module) in the order of parameters() and _children().

    Names follow PyTorch's: attribute names, list and tuple indices, dict keys;
    the attributes a class lists in `_unnamed_attrs` add no name of their own
    (Sequential's `modules` tuple gives "0.weight" as in torch.nn.Sequential).
    """
    if isinstance(value, Parameter):
        yield name, value
    elif isinstance(value, Module):
        yield name, value
        if into_modules:
            yield from value._named_attrs(name, into_modules)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _named_items(v, _join(name, str(k)), into_modules)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _named_items(v, _join(name, str(i)), into_modules)


class _IncompatibleKeys(NamedTuple):
    missing_keys: List[str]
    unexpected_keys: List[str]


def _as_numpy(value: Any) -> np.ndarray:
    """The data of a Tensor, NDArray, NumPy array or array-like (a torch CPU tensor:
    detached by duck typing, needle never imports torch)."""
    if isinstance(value, Tensor):
        return value.numpy()
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
    return np.asarray(value)


class Module:
    """Base class: parameters() walks the attributes in insertion order.

    >>> import needle as ndl
    >>> class TwoLayer(ndl.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b = ndl.nn.Linear(4, 8), ndl.nn.Linear(8, 2)
    ...     def forward(self, x):
    ...         return self.b(self.a(x).relu())
    >>> m = TwoLayer()
    >>> [p.shape for p in m.parameters()]
    [(4, 8), (1, 8), (8, 2), (1, 2)]
    >>> m.eval().training
    False

    state_dict() / load_state_dict() use PyTorch's dotted names for parameters
    and for the buffers a module registers (register_buffer: BatchNorm's
    running statistics), so that checkpoints and torch weights line up:
    ``model.state_dict()`` is ``{"0.weight": Tensor, ...}`` and
    ``model.load_state_dict(sd)`` (strict) wants the same keys and shapes.
    """

    _unnamed_attrs: Tuple[str, ...] = ()

    def __init__(self):
        self.training = True

    def parameters(self) -> List[Tensor]:
        """Every Parameter reachable through attributes, dicts, lists and tuples."""
        return _unpack_params(self.__dict__)

    def _children(self) -> List["Module"]:
        return _child_modules(self.__dict__)

    def _named_attrs(self, prefix: str, into_modules: bool) -> Iterator[Tuple[str, Any]]:
        for key, value in self.__dict__.items():
            name = prefix if key in self._unnamed_attrs else _join(prefix, key)
            yield from _named_items(value, name, into_modules)

    def named_parameters(self, prefix: str = "") -> List[Tuple[str, Parameter]]:
        """(name, Parameter) pairs in the order of parameters() (no de-duplication)."""
        return [(n, p) for n, p in self._named_attrs(prefix, True) if isinstance(p, Parameter)]

    def named_modules(self, prefix: str = "") -> List[Tuple[str, "Module"]]:
        """(name, Module) pairs: self ("") first, then _children()'s order."""
        return [(prefix, self)] + [(n, m) for n, m in self._named_attrs(prefix, True)
                                   if isinstance(m, Module)]

    def register_buffer(self, name: str, tensor: Optional[Tensor],
                        persistent: bool = True) -> None:
        """Make attribute `name` a buffer: state that is saved and loaded with the
        parameters but is not one (a plain Tensor, outside parameters()).
        Assigning the attribute later keeps it a buffer."""
        if not isinstance(name, str) or not name or "." in name:
            raise KeyError(f"buffer name must be a non-empty string without '.', got {name!r}")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot assign {type(tensor).__name__} as buffer '{name}' "
                            "(a needle Tensor or None is required)")
        if isinstance(tensor, Parameter):
            raise KeyError(f"'{name}' is a Parameter, not a buffer")
        self.__dict__.setdefault("_buffer_names", {})[name] = persistent
        setattr(self, name, tensor)

    def _own_buffers(self, persistent_only: bool) -> Iterator[Tuple[str, Tensor]]:
        for name, persistent in self.__dict__.get("_buffer_names", {}).items():
            value = getattr(self, name, None)
            if value is not None and (persistent or not persistent_only):
                yield name, value

    def named_buffers(self, prefix: str = "",
                      persistent_only: bool = False) -> List[Tuple[str, Tensor]]:
        """(name, Tensor) for the buffers of self and of every submodule."""
        return [(_join(mp, n), b) for mp, m in self.named_modules(prefix)
                for n, b in m._own_buffers(persistent_only)]

    def buffers(self) -> List[Tensor]:
        return [b for _, b in self.named_buffers()]

    def state_dict(self) -> "OrderedDict[str, Tensor]":
        """Parameters and persistent buffers by dotted name, module by module as in
        torch: detached Tensors sharing the module's data (as torch's: copy them, or
        save them, before training on)."""
        sd: "OrderedDict[str, Tensor]" = OrderedDict()
        for name, (_, _, value) in self._state_owners().items():
            sd[name] = value.detach()
        return sd

    def _state_owners(self) -> Dict[str, Tuple["Module", str, Tensor]]:
        """name -> (owning module, buffer name or "" for a Parameter, current value),
        module by module (its parameters, then its buffers), as torch orders them."""
        owners: Dict[str, Tuple[Module, str, Tensor]] = {}
        for mp, m in self.named_modules():
            for key, value in m._named_attrs(mp, False):
                if isinstance(value, Parameter):
                    owners[key] = (m, "", value)
            for name, b in m._own_buffers(True):
                owners[_join(mp, name)] = (m, name, b)
        return owners

    def load_state_dict(self, state_dict: Mapping[str, Any],
                        strict: bool = True) -> _IncompatibleKeys:
        """Copy values (Tensors, NDArrays, NumPy arrays) into the parameters (in
        place: optimizers keep working) and buffers, cast to their dtype.

        A shape mismatch is always an error; with strict, so are missing and
        unexpected keys. Raises RuntimeError with PyTorch's messages; returns
        (missing_keys, unexpected_keys)."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"expected a mapping of names to arrays, got "
                            f"{type(state_dict).__name__}")
        owners = self._state_owners()
        errors: List[str] = []
        loaded: List[Tuple[Module, str, Tensor, np.ndarray]] = []
        for key, (m, buffer_name, current) in owners.items():
            if key not in state_dict:
                continue
            value = _as_numpy(state_dict[key])
            if tuple(value.shape) != tuple(current.shape):
                errors.append(f"size mismatch for {key}: copying a param with shape "
                              f"{_shape_str(value.shape)} from checkpoint, the shape in "
                              f"current model is {_shape_str(current.shape)}.")
                continue
            loaded.append((m, buffer_name, current, value))
        missing = [k for k in owners if k not in state_dict]
        unexpected = [k for k in state_dict if k not in owners]
        _raise_load_errors(self, errors, missing, unexpected, strict)
        for m, buffer_name, current, value in loaded:
            new = Tensor(value, device=current.device, dtype=current.dtype, requires_grad=False)
            if buffer_name:
                setattr(m, buffer_name, new)
            else:
                current.data = new
        return _IncompatibleKeys(missing, unexpected)

    def eval(self) -> "Module":
        self.training = False
        for m in self._children():
            m.training = False
        return self

    def train(self) -> "Module":
        self.training = True
        for m in self._children():
            m.training = True
        return self

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


def _raise_load_errors(module: "Module", errors: List[str], missing: List[str],
                       unexpected: List[str], strict: bool) -> None:
    """torch's RuntimeError for a state dict that does not fit module (strict: the missing
    and unexpected keys first), or nothing when it fits."""
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


def _shape_str(shape) -> str:
    return str(tuple(int(d) for d in shape))


def _check_input(module: str, x, layout: str, ndim: int, *, min_ndim: bool = False,
                 features: Optional[int] = None, axis: int = -1) -> None:
    """ValueError naming the module, the expected layout and x's shape unless x has ndim
    dimensions (at least ndim with min_ndim) and, if given, `features` along `axis`."""
    shape = tuple(getattr(x, "shape", ()))
    ok = len(shape) >= ndim if min_ndim else len(shape) == ndim
    if ok and (features is None or shape[axis] == features):
        return
    want = f"{'at least ' if min_ndim else ''}{ndim}-d input of shape {layout}"
    if features is not None:
        want += f" with {features} features along axis {axis}"
    raise ValueError(f"{module}: expected a {want}, got shape {shape}")


class Identity(Module):
    """The input unchanged.

    >>> import needle as ndl
    >>> ndl.nn.Identity()(ndl.Tensor([1.0, 2.0]))
    needle.Tensor([1. 2.])
    """
    def forward(self, x: Tensor) -> Tensor:
        return x


class Linear(Module):
    """y = x @ weight + bias; weight (in, out), bias (1, out).

    >>> import needle as ndl
    >>> layer = ndl.nn.Linear(3, 2)
    >>> layer.weight.shape, layer.bias.shape
    ((3, 2), (1, 2))
    >>> layer(ndl.init.ones(5, 3)).shape
    (5, 2)
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype="float32"):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(init.kaiming_uniform(in_features, out_features, device=device,
                                                     dtype=dtype))
        # NOTE: the course draws the bias with fan_in = out_features (API.md 10.2).
        self.bias = Parameter(init.kaiming_uniform(out_features, 1, device=device, dtype=dtype)
                              .reshape((1, out_features))) if bias else None

    def forward(self, X: Tensor) -> Tensor:
        _check_input(f"Linear({self.in_features}, {self.out_features})", X, "(..., in_features)",
                     1, min_ndim=True, features=self.in_features)
        if self.bias is not None and len(X.shape) == 2:  # one node (Note [Fused Linear])
            return ops.linear(X, self.weight, self.bias)
        y = X @ self.weight
        if self.bias is not None:
            y = y + self.bias.broadcast_to(y.shape)
        return y


class Flatten(Module):
    """Keep the first axis, flatten the rest: (B, d1, d2, ...) -> (B, d1 * d2 * ...).

    >>> import needle as ndl
    >>> ndl.nn.Flatten()(ndl.init.ones(2, 3, 4)).shape
    (2, 12)
    """
    def forward(self, X: Tensor) -> Tensor:
        _check_input("Flatten", X, "(N, ...)", 1, min_ndim=True)
        shape = X.shape
        return X.reshape((shape[0], math.prod(shape[1:])))


class ReLU(Module):
    """max(x, 0), elementwise.

    >>> import needle as ndl
    >>> ndl.nn.ReLU()(ndl.Tensor([-1.0, 0.0, 2.0]))
    needle.Tensor([0. 0. 2.])
    """
    def forward(self, x: Tensor) -> Tensor:
        return ops.relu(x)


class Sigmoid(Module):
    """1 / (1 + exp(-x)) as one op (ops.Sigmoid): the contract's numbers and
    gradient, y * (1 - y), without the four-op graph; stable for large |x|.

    >>> import needle as ndl
    >>> ndl.nn.Sigmoid()(ndl.Tensor([0.0]))
    needle.Tensor([0.5])
    """

    def forward(self, x: Tensor) -> Tensor:
        return ops.sigmoid(x)


class Tanh(Module):
    """tanh(x), elementwise.

    >>> import needle as ndl
    >>> ndl.nn.Tanh()(ndl.Tensor([0.0]))
    needle.Tensor([0.])
    """
    def forward(self, x: Tensor) -> Tensor:
        return ops.tanh(x)


class Sequential(Module):
    """The modules applied one after the other.

    >>> import needle as ndl
    >>> model = ndl.nn.Sequential(ndl.nn.Linear(4, 8), ndl.nn.ReLU(), ndl.nn.Linear(8, 3))
    >>> model(ndl.init.ones(2, 4)).shape
    (2, 3)
    >>> len(model.parameters())
    4
    """

    _unnamed_attrs = ("modules",)  # state_dict names "0.weight", as torch.nn.Sequential

    def __init__(self, *modules):
        super().__init__()
        self.modules = modules

    def forward(self, x: Tensor) -> Tensor:
        for module in self.modules:
            x = module(x)
        return x


class Residual(Module):
    """fn(x) + x.

    >>> import needle as ndl
    >>> block = ndl.nn.Residual(ndl.nn.Sequential(ndl.nn.Linear(4, 4), ndl.nn.ReLU()))
    >>> block(ndl.init.ones(2, 4)).shape
    (2, 4)
    >>> ndl.nn.Residual(ndl.nn.Identity())(ndl.Tensor([1.0, 2.0]))
    needle.Tensor([2. 4.])
    """
    def __init__(self, fn: Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) + x


class SoftmaxLoss(Module):
    """Mean softmax cross-entropy of logits (B, k) against integer labels y (B,).

    >>> import numpy as np, needle as ndl
    >>> logits = ndl.Tensor([[0.0, 0.0], [10.0, 0.0]])
    >>> loss = ndl.nn.SoftmaxLoss()(logits, ndl.Tensor([0, 0]))
    >>> round(float(loss.numpy()), 4)  # (log 2 + ~0) / 2
    0.3466
    """

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        _check_input("SoftmaxLoss", logits, "(batch, classes)", 2)
        _check_input(f"SoftmaxLoss labels for logits of shape {tuple(logits.shape)}", y,
                     "(batch,)", 1, features=logits.shape[0], axis=0)
        batch, k = logits.shape
        labels = y.numpy()  # the step's one read of the labels (Note [Labels read once])
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            bad = labels[(labels < 0) | (labels >= k)][0]
            raise ValueError(f"SoftmaxLoss: label {bad} is out of range for {k} classes")
        if len(logits.shape) == 2:  # one fused node (Note [Fused softmax loss], ops_softmax.c)
            # The op reads its labels on the host (Note [Inputs read on the host], op.c):
            # give it the values just read, on the cpu device, so it copies nothing.
            # y gets no gradient, as in the contract's formula (one_hot(k, y) is a
            # constant).
            labels_host = Tensor(labels, device=cpu(), dtype=y.dtype, requires_grad=False)
            return ops.softmax_cross_entropy(logits, labels_host)
        y_one_hot = init.one_hot(k, y, device=logits.device, dtype=logits.dtype)
        lse = ops.summation(ops.logsumexp(logits, axes=(1,)))
        return (lse - ops.summation(logits * y_one_hot)) / batch


def _row(t: Tensor, like: Tensor) -> Tensor:
    """A (dim,) tensor reshaped (1, dim) and broadcast to like's shape."""
    return t.reshape((1, t.shape[0])).broadcast_to(like.shape)


class LayerNorm1d(Module):
    """Normalise each row over its last axis: w * (x - mean) / sqrt(var + eps) + b.

    >>> import needle as ndl
    >>> y = ndl.nn.LayerNorm1d(3)(ndl.Tensor([[1.0, 2.0, 3.0]]))
    >>> [round(v, 3) for v in y.numpy()[0].tolist()]
    [-1.225, 0.0, 1.225]
    """

    def __init__(self, dim, eps=1e-5, device=None, dtype="float32"):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        _check_input(f"LayerNorm1d({self.dim})", x, "(..., dim)", 1, min_ndim=True,
                     features=self.dim)
        shape = x.shape
        x2 = x.reshape((math.prod(shape[:-1]), shape[-1])) if len(shape) != 2 else x
        rows, n = x2.shape
        mean = (x2.sum(axes=(1,)) / n).reshape((rows, 1)).broadcast_to(x2.shape)
        xc = x2 - mean
        var = ((xc ** 2).sum(axes=(1,)) / n).reshape((rows, 1)).broadcast_to(x2.shape)
        y = _row(self.weight, x2) * (xc / ((var + self.eps) ** 0.5)) + _row(self.bias, x2)
        return y.reshape(shape) if len(shape) != 2 else y


class BatchNorm1d(Module):
    """Per-feature normalisation over the batch, with running statistics (API.md 6.3).

    >>> import needle as ndl
    >>> bn = ndl.nn.BatchNorm1d(2)
    >>> y = bn(ndl.Tensor([[1.0, 10.0], [3.0, 30.0]]))
    >>> [round(v, 3) for v in y.numpy()[:, 0].tolist()]
    [-1.0, 1.0]
    >>> bn.running_mean
    needle.Tensor([0.2 2. ])
    """

    def __init__(self, dim, eps=1e-5, momentum=0.1, device=None, dtype="float32"):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype))
        # Buffers: in state_dict(), outside parameters() (API.md 6.1).
        self.register_buffer("running_mean", init.zeros(dim, device=device, dtype=dtype))
        self.register_buffer("running_var", init.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        _check_input(f"{type(self).__name__}({self.dim})", x, "(N, dim)", 2, features=self.dim)
        if not self.training:
            xc = x - _row(self.running_mean, x)
            std = _row((self.running_var + self.eps) ** 0.5, x)
            return _row(self.weight, x) * (xc / std) + _row(self.bias, x)
        n = x.shape[0]
        mean = x.sum(axes=(0,)) / n
        xc = x - _row(mean, x)
        var = (xc ** 2).sum(axes=(0,)) / n
        m = self.momentum
        # NOTE: the running variance uses the biased batch variance (API.md 10.1),
        # on detached data so that no graph survives the step.
        self.running_mean = (self.running_mean * (1 - m) + mean.data * m).data
        self.running_var = (self.running_var * (1 - m) + var.data * m).data
        std = _row((var + self.eps) ** 0.5, x)
        return _row(self.weight, x) * (xc / std) + _row(self.bias, x)


class BatchNorm2d(BatchNorm1d):
    """BatchNorm over the channels of an NCHW input.

    >>> import needle as ndl
    >>> ndl.nn.BatchNorm2d(3)(ndl.init.randn(2, 3, 4, 4)).shape
    (2, 3, 4, 4)
    """

    def forward(self, x: Tensor) -> Tensor:
        _check_input(f"BatchNorm2d({self.dim})", x, "(N, C, H, W)", 4, features=self.dim, axis=1)
        n, c, h, w = x.shape
        nhwc = x.transpose((1, 2)).transpose((2, 3))
        y = super().forward(nhwc.reshape((n * h * w, c))).reshape((n, h, w, c))
        return y.transpose((2, 3)).transpose((1, 2))


def _packed_bits(x: Tensor, keep: float) -> Tensor:
    """init.randb(*x.shape, p=keep)'s mask, packed on the host: 16 mask entries to an
    element of bits, as the integers 0 .. 65535 in x's dtype, on x's device (ops_dropout.c,
    Note [Dropout mask on the device]); only the bits are uploaded.

    The draw is init.randb's: one np.random.rand(*x.shape) (float64) rounded to float32
    (device.rand's dtype), compared `<= keep` with keep rounded to float32 first, as the
    NDArray scalar comparison rounds its scalar (API.md 2.8). So a seed gives the mask
    init.randb gives, bit for bit, and the random stream advances by the same draw.
    """
    draw = np.asarray(np.random.rand(*x.shape), dtype=np.float64).astype(np.float32)
    flat = draw.reshape(-1) <= np.float32(keep)
    flat = np.concatenate([flat, np.zeros((-flat.size) % 16, dtype=bool)])
    bits = np.packbits(flat, bitorder="little").view("<u2").astype(x.dtype)
    return Tensor(bits, device=x.device, dtype=x.dtype, requires_grad=False)


class Dropout(Module):
    """Zero each element with probability p in training, scale the rest by 1/(1-p).

    >>> import needle as ndl
    >>> drop = ndl.nn.Dropout(0.5)
    >>> y = drop(ndl.init.ones(1000))
    >>> sorted(set(y.numpy().tolist()))    # dropped, or scaled by 1 / (1 - p)
    [0.0, 2.0]
    >>> drop.eval()(ndl.init.ones(3))      # the identity in evaluation
    needle.Tensor([1. 1. 1.])
    """

    def __init__(self, p=0.5):
        super().__init__()
        # NOTE: PyTorch's range, [0, 1]: p = 1 zeroes everything (forward's p >= 1 branch).
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        # NOTE: the mask is drawn even when p == 0 (API.md 10.4), so the random
        # stream advances as the course's does; with p == 0 it keeps every entry
        # and scales by 1, so x * mask / (1 - p) is x itself, bit for bit.
        if self.p == 0:
            np.random.rand(*x.shape)
            return x
        if BACKEND == "nd" and self.p < 1:
            # x * mask / (1 - p), one node storing the mask packed (Note [Fused dropout]),
            # drawn and packed on the host: nothing comes back from the device
            return ops.masked_scale(x, _packed_bits(x, 1 - self.p), 1 - self.p, 1.0)
        mask = init.randb(*x.shape, p=1 - self.p, device=x.device, dtype=x.dtype)
        if self.p >= 1:
            return x * mask
        return ops.masked_scale(x, mask, 1 - self.p, 0.0)
