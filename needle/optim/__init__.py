"""needle.optim: SGD and Adam (API.md 7).

Updates read detached values (`p.grad.data`, `p.data`), assign through the
`data` setter and store state detached, so no graph survives a step, and
compute in the parameters' own dtype (Python floats never promote float32).
In nd mode each parameter's update is one fused C pass (`_C.adam_update`,
`_C.sgd_update`: the same formula, computed in the same order); np mode, and
any array that is not an NDArray, runs the formula with tensor ops.

>>> import needle as ndl
>>> model = ndl.nn.Linear(3, 1)
>>> opt = ndl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
>>> loss = (model(ndl.init.ones(4, 3)) ** 2).sum()
>>> loss.backward(); opt.step(); opt.reset_grad()
>>> model.weight.grad is None
True
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np

from needle import _C, init
from needle.autograd import Tensor, no_grad
from needle.backend_ndarray import NDArray

__all__ = ["Optimizer", "SGD", "Adam"]


def _fusable(p: Tensor) -> bool:
    """True when p and its gradient are NDArrays of one dtype (the fused C path applies)."""
    data, grad = p.cached_data, p.grad.cached_data
    return (isinstance(data, NDArray) and isinstance(grad, NDArray) and data.dtype == grad.dtype
            and data.shape == grad.shape)


def _state_copy(value: Any, like: Tensor, what: str) -> Tensor:
    """A detached copy of value (Tensor, NDArray or NumPy array) with like's device and
    dtype, after checking its shape (the fused updates write states in place, so a
    state dict never aliases live state)."""
    data = value.numpy() if isinstance(value, (Tensor, NDArray)) else np.asarray(value)
    if tuple(data.shape) != tuple(like.shape):
        raise ValueError(f"optimizer state {what} has shape {tuple(data.shape)}, "
                         f"its parameter has shape {tuple(like.shape)}")
    return Tensor(data, device=like.device, dtype=like.dtype, requires_grad=False)


class Optimizer:
    """Base class: holds the parameters; step() updates them, reset_grad() clears .grad.

    >>> import needle as ndl
    >>> p = ndl.nn.Parameter(ndl.Tensor([1.0]))
    >>> opt = ndl.optim.Optimizer([p])
    >>> p.grad = ndl.Tensor([0.5]); opt.reset_grad(); p.grad is None
    True

    state_dict() / load_state_dict() follow torch.optim's layout:
    {"state": {param index: {name: Tensor}}, "param_groups": [{hyperparameters...,
    "params": [indices]}]}, so that training resumes exactly.
    """

    _state_names: Tuple[str, ...] = ()   # the dicts of per-parameter state tensors
    _hyper_names: Tuple[str, ...] = ()   # scalars saved in the param group

    def __init__(self, params: List[Tensor]):
        self.params = params

    def state_dict(self) -> Dict[str, Any]:
        """Copies of the per-parameter state, keyed by the parameter's index."""
        index = {id(p): i for i, p in enumerate(self.params)}
        state: Dict[int, Dict[str, Tensor]] = {}
        for name in self._state_names:
            for p, value in getattr(self, name).items():
                if id(p) not in index:
                    raise RuntimeError(f"optimizer state '{name}' holds a tensor that is not "
                                       "one of its parameters")
                state.setdefault(index[id(p)], {})[name] = _state_copy(value, p, name)
        group = {h: getattr(self, h) for h in self._hyper_names}
        group["params"] = list(range(len(self.params)))
        return {"state": dict(sorted(state.items())), "param_groups": [group]}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore hyperparameters and state (copied) from state_dict()'s output."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if not isinstance(groups, list) or "state" not in state_dict:
            raise ValueError("optimizer state dict must have 'state' and 'param_groups'")
        if len(groups) != 1:
            raise ValueError(f"loaded state dict has {len(groups)} parameter groups, "
                             "this optimizer has 1")
        n = len(groups[0].get("params", ()))
        if n != len(self.params):
            raise ValueError("loaded state dict contains a parameter group that doesn't match "
                             f"the size of optimizer's group ({n} != {len(self.params)})")
        stores: Dict[str, Dict[Tensor, Tensor]] = {name: {} for name in self._state_names}
        for key, entry in state_dict["state"].items():
            i = int(key)
            if not 0 <= i < n:
                raise ValueError(f"optimizer state for parameter {i}, of {n}")
            for name, value in entry.items():
                if name not in stores:
                    raise ValueError(f"unexpected optimizer state '{name}' for parameter {i} "
                                     f"({type(self).__name__} keeps {self._state_names})")
                p = self.params[i]
                stores[name][p] = _state_copy(value, p, f"'{name}' of parameter {i}")
        for h in self._hyper_names:
            if h in groups[0]:
                setattr(self, h, groups[0][h])
        for name, store in stores.items():
            setattr(self, name, store)

    def step(self):
        raise NotImplementedError()

    def reset_grad(self):
        for p in self.params:
            p.grad = None

    def clip_grad_norm(self, max_norm: float = 0.25) -> float:
        """Scale every gradient by max_norm / (total_norm + 1e-6) when that is < 1."""
        with no_grad():
            grads = [p.grad.data for p in self.params if p.grad is not None]
            # Each squared norm in its gradient's dtype, widened to float64 and summed in
            # parameter order on the device: one read for the whole norm, not one per
            # parameter (the same additions as summing the floats in Python).
            # (float32 + float64 promotes exactly, so a float64 zero starts the sum)
            total = 0.0
            if grads:
                acc = init.zeros(device=grads[0].device, dtype="float64")
                for g in grads:
                    acc = acc + (g * g).sum()
                total = math.sqrt(float(acc.numpy()))
            scale = max_norm / (total + 1e-6)
            if scale < 1:
                for p in self.params:
                    if p.grad is not None:
                        p.grad = p.grad.data * scale
        return total


class SGD(Optimizer):
    """u = m * u + (1 - m) * (grad + wd * p);  p -= lr * u  (note the (1 - m)).

    >>> import needle as ndl
    >>> w = ndl.nn.Parameter(ndl.Tensor([1.0, -2.0]))
    >>> opt = ndl.optim.SGD([w], lr=0.1)
    >>> (w * w).sum().backward(); opt.step()     # w -= 0.1 * 2 w
    >>> w
    needle.Tensor([ 0.8 -1.6])
    """

    _state_names = ("u",)
    _hyper_names = ("lr", "momentum", "weight_decay")

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
    """Adam with bias correction; weight decay is added to the gradient (API.md 7).

    >>> import needle as ndl
    >>> w = ndl.nn.Parameter(ndl.Tensor([1.0, -2.0]))
    >>> opt = ndl.optim.Adam([w], lr=0.1)
    >>> (w * w).sum().backward(); opt.step()     # the first step moves each weight by lr
    >>> w
    needle.Tensor([ 0.9 -1.9])
    """

    _state_names = ("m", "v")
    _hyper_names = ("lr", "beta1", "beta2", "eps", "weight_decay", "t")

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
