"""needle.optim: SGD and Adam (API.md 7).

Updates read detached values (`p.grad.data`, `p.data`), assign through the
`data` setter and store state detached, so no graph survives a step, and
compute in the parameters' own dtype (Python floats never promote float32).

>>> opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> loss.backward(); opt.step(); opt.reset_grad()
"""
from __future__ import annotations

import math
from typing import Dict, List

from needle.autograd import Tensor, no_grad

__all__ = ["Optimizer", "SGD", "Adam"]


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
                grad = p.grad.data
                if self.weight_decay:
                    grad = grad + p.data * self.weight_decay
                m, v = self.m.get(p), self.v.get(p)
                m = grad * (1 - b1) if m is None else m * b1 + grad * (1 - b1)
                v = (grad * grad) * (1 - b2) if v is None else v * b2 + (grad * grad) * (1 - b2)
                self.m[p], self.v[p] = m, v
                m_hat, v_hat = m / c1, v / c2
                p.data = p.data - (m_hat / (v_hat ** 0.5 + self.eps)) * self.lr
