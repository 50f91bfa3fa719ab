"""needle.autograd: Value, Tensor, TensorTuple, ops and reverse-mode AD (API.md 3).

The types and the backward walk are C (needle._C); this module names them
as the course does and holds the two process-wide switches:

>>> import needle as ndl
>>> x = ndl.Tensor([1.0, 2.0, 3.0])
>>> (x * x).sum().backward()
>>> x.grad
needle.Tensor([2. 4. 6.])
"""
from __future__ import annotations

import sys
import types
from typing import List

from needle import _C

from .backend_selection import NDArray, array_api, default_device  # noqa: F401
from .backend_selection import Device, all_devices, cpu  # noqa: F401

Value = _C.Value
Tensor = _C.Tensor
TensorTuple = _C.TensorTuple
Op = _C.Op
TensorOp = _C.TensorOp
TensorTupleOp = _C.TensorTupleOp
find_topo_sort = _C.find_topo_sort
compute_gradient_of_variables = _C.compute_gradient_of_variables
sum_node_list = _C.sum_node_list


def topo_sort_dfs(node: Value, visited: set, topo_order: List[Value]) -> None:
    """Post-order DFS from `node` (the recursive definition find_topo_sort follows)."""
    if node in visited:
        return
    visited.add(node)
    for child in node.inputs:
        topo_sort_dfs(child, visited, topo_order)
    topo_order.append(node)


class no_grad:
    """Context manager under which op results record no graph.

    >>> with no_grad():
    ...     y = x * 2          # y.requires_grad is False, y.op is None
    """

    def __enter__(self) -> "no_grad":
        self._prev = _C.set_grad_enabled(False)
        return self

    def __exit__(self, *exc) -> None:
        _C.set_grad_enabled(self._prev)


class _AutogradModule(types.ModuleType):
    """Makes LAZY_MODE and TENSOR_COUNTER live views of the C core's state."""

    @property
    def LAZY_MODE(self) -> bool:
        return _C.get_lazy_mode()

    @LAZY_MODE.setter
    def LAZY_MODE(self, value: bool) -> None:
        _C.set_lazy_mode(bool(value))

    @property
    def TENSOR_COUNTER(self) -> int:
        """Values made and not yet freed (uncollected cyclic garbage included)."""
        return _C.tensor_count()


sys.modules[__name__].__class__ = _AutogradModule
