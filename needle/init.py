"""needle.init: tensor initialisers (API.md 5).

Every random draw is one call to NumPy's global generator with the full
shape, so seeded runs reproduce the course's numbers.

>>> import numpy as np, needle as ndl
>>> np.random.seed(0); w = ndl.init.kaiming_uniform(3, 2)
>>> w.shape, w.requires_grad
((3, 2), False)
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import needle as ndl

from .autograd import Tensor


def _device(device):
    return ndl.cpu() if device is None else device


def rand(*shape, low=0.0, high=1.0, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Uniform in [low, high): one np.random.rand(*shape) draw."""
    device = _device(device)
    array = device.rand(*shape) * (high - low) + low
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def randn(*shape, mean=0.0, std=1.0, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Normal(mean, std): one np.random.randn(*shape) draw."""
    device = _device(device)
    array = device.randn(*shape) * std + mean
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def constant(*shape, c=1.0, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Every element equal to c."""
    device = _device(device)
    array = device.full(shape, c, dtype=dtype)
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def ones(*shape, device=None, dtype="float32", requires_grad=False) -> Tensor:
    return constant(*shape, c=1.0, device=device, dtype=dtype, requires_grad=requires_grad)


def zeros(*shape, device=None, dtype="float32", requires_grad=False) -> Tensor:
    return constant(*shape, c=0.0, device=device, dtype=dtype, requires_grad=requires_grad)


def randb(*shape, p=0.5, device=None, dtype="bool", requires_grad=False) -> Tensor:
    """Bernoulli(p) as 0/1: np.random.rand(*shape) <= p."""
    device = _device(device)
    array = device.rand(*shape) <= p
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def one_hot(n, i, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Rows of the n x n identity selected by the labels in Tensor i."""
    device = _device(device)
    return Tensor(device.one_hot(n, i.numpy().astype("int32"), dtype=dtype), device=device,
                  requires_grad=requires_grad)


def zeros_like(array, *, device=None, requires_grad=False) -> Tensor:
    device = device if device else array.device
    return zeros(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)


def ones_like(array, *, device=None, requires_grad=False) -> Tensor:
    device = device if device else array.device
    return ones(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)


def xavier_uniform(fan_in, fan_out, gain=1.0, **kwargs) -> Tensor:
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rand(fan_in, fan_out, low=-a, high=a, **kwargs)


def xavier_normal(fan_in, fan_out, gain=1.0, **kwargs) -> Tensor:
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return randn(fan_in, fan_out, mean=0.0, std=std, **kwargs)


def kaiming_uniform(fan_in, fan_out, shape: Optional[Sequence[int]] = None,
                    nonlinearity="relu", **kwargs) -> Tensor:
    assert nonlinearity == "relu", "Only relu supported currently"
    bound = math.sqrt(2.0) * math.sqrt(3.0 / fan_in)
    return rand(*(shape or (fan_in, fan_out)), low=-bound, high=bound, **kwargs)


def kaiming_normal(fan_in, fan_out, nonlinearity="relu", shape=None, **kwargs) -> Tensor:
    assert nonlinearity == "relu", "Only relu supported currently"
    std = math.sqrt(2.0) / math.sqrt(fan_in)
    return randn(*(shape or (fan_in, fan_out)), mean=0.0, std=std, **kwargs)


def _calculate_fans(x):
    """(fan_in, fan_out) of a 2-D (in, out) or 4-D (K, K, in, out) shape or tensor."""
    shape = tuple(x.shape) if hasattr(x, "shape") else tuple(x)
    if len(shape) == 2:
        return shape[0], shape[1]
    k = shape[0] * shape[1]
    return shape[2] * k, shape[3] * k
