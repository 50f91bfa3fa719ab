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
    return ndl.default_device() if device is None else device


def rand(*shape, low=0.0, high=1.0, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Uniform in [low, high): one np.random.rand(*shape) draw.

    >>> import needle as ndl
    >>> x = ndl.init.rand(2, 3, low=-1.0, high=1.0)
    >>> x.shape, bool((x.numpy() >= -1).all() and (x.numpy() < 1).all())
    ((2, 3), True)
    """
    device = _device(device)
    array = device.rand(*shape) * (high - low) + low
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def randn(*shape, mean=0.0, std=1.0, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Normal(mean, std): one np.random.randn(*shape) draw.

    >>> import needle as ndl
    >>> ndl.init.randn(4, 5, mean=3.0, std=0.0)
    needle.Tensor([[3. 3. 3. 3. 3.]
     [3. 3. 3. 3. 3.]
     [3. 3. 3. 3. 3.]
     [3. 3. 3. 3. 3.]])
    """
    device = _device(device)
    array = device.randn(*shape) * std + mean
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def constant(*shape, c=1.0, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Every element equal to c.

    >>> import needle as ndl
    >>> ndl.init.constant(2, 2, c=7.0)
    needle.Tensor([[7. 7.]
     [7. 7.]])
    """
    device = _device(device)
    array = device.full(shape, c, dtype=dtype)
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def ones(*shape, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Every element 1.

    >>> import needle as ndl
    >>> ndl.init.ones(3)
    needle.Tensor([1. 1. 1.])
    """
    return constant(*shape, c=1.0, device=device, dtype=dtype, requires_grad=requires_grad)


def zeros(*shape, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Every element 0.

    >>> import needle as ndl
    >>> ndl.init.zeros(2, dtype="float64").dtype
    'float64'
    """
    return constant(*shape, c=0.0, device=device, dtype=dtype, requires_grad=requires_grad)


def randb(*shape, p=0.5, device=None, dtype="bool", requires_grad=False) -> Tensor:
    """Bernoulli(p) as 0/1: np.random.rand(*shape) <= p.

    >>> import needle as ndl
    >>> ndl.init.randb(4, p=1.0)
    needle.Tensor([1. 1. 1. 1.])
    """
    device = _device(device)
    array = device.rand(*shape) <= p
    return Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def one_hot(n, i, device=None, dtype="float32", requires_grad=False) -> Tensor:
    """Rows of the n x n identity selected by the labels in Tensor i.

    >>> import needle as ndl
    >>> ndl.init.one_hot(4, ndl.Tensor([1, 3]))
    needle.Tensor([[0. 1. 0. 0.]
     [0. 0. 0. 1.]])
    """
    device = _device(device)
    return Tensor(device.one_hot(n, i.numpy().astype("int32"), dtype=dtype), device=device,
                  requires_grad=requires_grad)


def zeros_like(array, *, device=None, requires_grad=False) -> Tensor:
    """Zeros of the shape, dtype and device of `array`.

    >>> import needle as ndl
    >>> ndl.init.zeros_like(ndl.init.ones(2, 3)).shape
    (2, 3)
    """
    device = device if device else array.device
    return zeros(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)


def ones_like(array, *, device=None, requires_grad=False) -> Tensor:
    """Ones of the shape, dtype and device of `array`.

    >>> import needle as ndl
    >>> ndl.init.ones_like(ndl.init.zeros(2))
    needle.Tensor([1. 1.])
    """
    device = device if device else array.device
    return ones(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)


def xavier_uniform(fan_in, fan_out, gain=1.0, **kwargs) -> Tensor:
    """Uniform in [-a, a], a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot and Bengio).

    >>> import needle as ndl
    >>> w = ndl.init.xavier_uniform(300, 100)
    >>> w.shape, bool(abs(w.numpy()).max() <= (6 / 400) ** 0.5)
    ((300, 100), True)
    """
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return rand(fan_in, fan_out, low=-a, high=a, **kwargs)


def xavier_normal(fan_in, fan_out, gain=1.0, **kwargs) -> Tensor:
    """Normal(0, std), std = gain * sqrt(2 / (fan_in + fan_out)).

    >>> import needle as ndl
    >>> w = ndl.init.xavier_normal(300, 100)
    >>> round(float(w.numpy().std()), 2)    # sqrt(2 / 400) = 0.0707
    0.07
    """
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return randn(fan_in, fan_out, mean=0.0, std=std, **kwargs)


def kaiming_uniform(fan_in, fan_out, shape: Optional[Sequence[int]] = None,
                    nonlinearity="relu", **kwargs) -> Tensor:
    """Uniform in [-b, b], b = sqrt(2) * sqrt(3 / fan_in) (He et al., for ReLU).

    >>> import needle as ndl
    >>> w = ndl.init.kaiming_uniform(96, 10)
    >>> w.shape, bool(abs(w.numpy()).max() <= (6 / 96) ** 0.5)
    ((96, 10), True)
    """
    assert nonlinearity == "relu", "Only relu supported currently"
    bound = math.sqrt(2.0) * math.sqrt(3.0 / fan_in)
    return rand(*(shape or (fan_in, fan_out)), low=-bound, high=bound, **kwargs)


def kaiming_normal(fan_in, fan_out, nonlinearity="relu", shape=None, **kwargs) -> Tensor:
    """Normal(0, std), std = sqrt(2) / sqrt(fan_in) (He et al., for ReLU).

    >>> import needle as ndl
    >>> w = ndl.init.kaiming_normal(200, 500)
    >>> round(float(w.numpy().std()), 2)    # sqrt(2 / 200) = 0.1
    0.1
    """
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
