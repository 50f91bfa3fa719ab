"""needle.optim: SGD and Adam (API.md 7).

Updates read detached values (`p.grad.data`, `p.data`), assign through the
`data` setter and store state detached, so no graph survives a step, and
compute in the parameters' own dtype (Python floats never promote float32).
In nd mode each parameter's update is one fused C pass (`_C.adam_update`,
`_C.sgd_update`: the same formula, computed in the same order); np mode, and
any array that is not an NDArray, runs the formula with tensor ops.

>>> opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> loss.backward(); opt.step(); opt.reset_grad()
"""
from __future__ import annotations

import math
from typing import Dict, List

from needle import _C
from needle.autograd import Tensor, no_grad
from needle.backend_ndarray import NDArray

__all__ = ["Optimizer", "SGD", "Adam"]


def _fusable(p: Tensor) -> bool:
    """True when p and its gradient are NDArrays of one dtype (the fused C path applies)."""
    data, grad = p.cached_data, p.grad.cached_data
    return (isinstance(data, NDArray) and isinstance(grad, NDArray) and data.dtype == grad.dtype
            and data.shape == grad.shape)


class Optimizer:
    def __init__(self, params: List[Tensor]):
        self.params = params

    def step(self):
        raise NotImplementedError()

    def reset_grad(self):
        for p in self.params:
            p.grad = None

    def clip_grad_norm(self, max_norm: float = 0.25) -> float:
        """Scale every gradient by max_norm / (total_norm + 1e-6) when that is < 1."""
        with no_grad():
            grads = [p.grad.data for p in self.params if p.grad is not None]
            total = math.sqrt(sum(float((g * g).sum().numpy()) for g in grads))
            scale = max_norm / (total + 1e-6)
            if scale < 1:
                for p in self.params:
                    if p.grad is not None:
                        p.grad = p.grad.data * scale
        return total


class SGD(Optimizer):
    """u = m * u + (1 - m) * (grad + wd * p);  p -= lr * u  (note the (1 - m))."""

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0):
        super().__init__(params)
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.u: Dict[Tensor, Tensor] = {}

    def step(self):
        with no_grad():
            for p in self.params:
                if p.grad is None:
                    continue
                if _fusable(p):
                    u = self.u.get(p)
                    new_p, new_u = _C.sgd_update(p.cached_data, p.grad.cached_data,
                                                 None if u is None else u.cached_data, self.lr,
                                                 self.momentum, self.weight_decay)
                    if new_u is not None and (u is None or new_u is not u.cached_data):
                        self.u[p] = Tensor.make_const(new_u)
                    p.data = Tensor.make_const(new_p)
                    continue
                grad = p.grad.data
                if self.weight_decay:
                    grad = grad + p.data * self.weight_decay
                if self.momentum:
                    prev = self.u.get(p)
                    u = grad * (1 - self.momentum)
                    if prev is not None:
                        u = prev * self.momentum + u
                    self.u[p] = u
                else:
                    u = grad
                p.data = p.data - u * self.lr


class Adam(Optimizer):
    """Adam with bias correction; weight decay is added to the gradient (API.md 7)."""

    def __init__(self, params, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weight_decay = weight_decay
        self.t = 0
        self.m: Dict[Tensor, Tensor] = {}
        self.v: Dict[Tensor, Tensor] = {}

    def step(self):
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        with no_grad():
            for p in self.params:
                if p.grad is None:
                    continue
                m, v = self.m.get(p), self.v.get(p)
                if _fusable(p):
                    new_p, new_m, new_v = _C.adam_update(
                        p.cached_data, p.grad.cached_data, None if m is None else m.cached_data,
                        None if v is None else v.cached_data, self.lr, b1, b2, self.eps,
                        self.weight_decay, self.t)
                    # states updated in place (the usual case) keep their Tensors
                    if m is None or new_m is not m.cached_data:
                        self.m[p] = Tensor.make_const(new_m)
                    if v is None or new_v is not v.cached_data:
                        self.v[p] = Tensor.make_const(new_v)
                    p.data = Tensor.make_const(new_p)
                    continue
                grad = p.grad.data
                if self.weight_decay:
                    grad = grad + p.data * self.weight_decay
                m = grad * (1 - b1) if m is None else m * b1 + grad * (1 - b1)
                v = (grad * grad) * (1 - b2) if v is None else v * b2 + (grad * grad) * (1 - b2)
                self.m[p], self.v[p] = m, v
                m_hat, v_hat = m / c1, v / c2
                p.data = p.data - (m_hat / (v_hat ** 0.5 + self.eps)) * self.lr
