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
from typing import Any, List, Optional

import numpy as np

from needle import init, ops
from needle.autograd import Tensor

__all__ = [
    "Parameter", "Module", "Identity", "Linear", "Flatten", "ReLU", "Sigmoid", "Tanh",
    "Sequential", "Residual", "SoftmaxLoss", "LayerNorm1d", "BatchNorm1d", "BatchNorm2d",
    "Dropout",
]


class Parameter(Tensor):
    """A Tensor that is a module's trainable parameter (a marker subclass)."""


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


class Module:
    """Base class: parameters() walks the attributes in insertion order."""

    def __init__(self):
        self.training = True

    def parameters(self) -> List[Tensor]:
        """Every Parameter reachable through attributes, dicts, lists and tuples."""
        return _unpack_params(self.__dict__)

    def _children(self) -> List["Module"]:
        return _child_modules(self.__dict__)

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
    def forward(self, x: Tensor) -> Tensor:
        return x


class Linear(Module):
    """y = x @ weight + bias; weight (in, out), bias (1, out)."""

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
        y = X @ self.weight
        if self.bias is not None:
            y = y + self.bias.broadcast_to(y.shape)
        return y


class Flatten(Module):
    def forward(self, X: Tensor) -> Tensor:
        _check_input("Flatten", X, "(N, ...)", 1, min_ndim=True)
        shape = X.shape
        return X.reshape((shape[0], math.prod(shape[1:])))


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.relu(x)


class Sigmoid(Module):
    """1 / (1 + exp(-x)) as one op (ops.Sigmoid): the contract's numbers and
    gradient, y * (1 - y), without the four-op graph; stable for large |x|."""

    def forward(self, x: Tensor) -> Tensor:
        return ops.sigmoid(x)


class Tanh(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.tanh(x)


class Sequential(Module):
    def __init__(self, *modules):
        super().__init__()
        self.modules = modules

    def forward(self, x: Tensor) -> Tensor:
        for module in self.modules:
            x = module(x)
        return x


class Residual(Module):
    def __init__(self, fn: Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) + x


class SoftmaxLoss(Module):
    """Mean softmax cross-entropy of logits (B, k) against integer labels y (B,)."""

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        _check_input("SoftmaxLoss", logits, "(batch, classes)", 2)
        _check_input(f"SoftmaxLoss labels for logits of shape {tuple(logits.shape)}", y,
                     "(batch,)", 1, features=logits.shape[0], axis=0)
        batch, k = logits.shape
        labels = y.numpy()
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            bad = labels[(labels < 0) | (labels >= k)][0]
            raise ValueError(f"SoftmaxLoss: label {bad} is out of range for {k} classes")
        y_one_hot = init.one_hot(k, y, device=logits.device, dtype=logits.dtype)
        lse = ops.summation(ops.logsumexp(logits, axes=(1,)))
        return (lse - ops.summation(logits * y_one_hot)) / batch


def _row(t: Tensor, like: Tensor) -> Tensor:
    """A (dim,) tensor reshaped (1, dim) and broadcast to like's shape."""
    return t.reshape((1, t.shape[0])).broadcast_to(like.shape)


class LayerNorm1d(Module):
    """Normalise each row over its last axis: w * (x - mean) / sqrt(var + eps) + b."""

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
    """Per-feature normalisation over the batch, with running statistics (API.md 6.3)."""

    def __init__(self, dim, eps=1e-5, momentum=0.1, device=None, dtype="float32"):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.momentum = momentum
        self.weight = Parameter(init.ones(dim, device=device, dtype=dtype))
        self.bias = Parameter(init.zeros(dim, device=device, dtype=dtype))
        self.running_mean = init.zeros(dim, device=device, dtype=dtype)
        self.running_var = init.ones(dim, device=device, dtype=dtype)

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
    """BatchNorm over the channels of an NCHW input."""

    def forward(self, x: Tensor) -> Tensor:
        _check_input(f"BatchNorm2d({self.dim})", x, "(N, C, H, W)", 4, features=self.dim, axis=1)
        n, c, h, w = x.shape
        nhwc = x.transpose((1, 2)).transpose((2, 3))
        y = super().forward(nhwc.reshape((n * h * w, c))).reshape((n, h, w, c))
        return y.transpose((2, 3)).transpose((1, 2))


class Dropout(Module):
    """Zero each element with probability p in training, scale the rest by 1/(1-p)."""

    def __init__(self, p=0.5):
        super().__init__()
        # NOTE: PyTorch's range, [0, 1]: p = 1 zeroes everything (forward's p >= 1 branch).
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        # NOTE: the mask is drawn even when p == 0 (API.md 10.4).
        mask = init.randb(*x.shape, p=1 - self.p, device=x.device, dtype=x.dtype)
        if self.p >= 1:
            return x * mask
        return x * mask / (1 - self.p)
