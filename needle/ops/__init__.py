"""needle.ops: every op class and op function of API.md 4 (all C, in needle._C).

>>> import needle as ndl
>>> ndl.ops.summation(ndl.ops.exp(ndl.Tensor([[0.0, 1.0]])), axes=(1,))
needle.Tensor([3.7182817])
"""
from needle import _C

from ..autograd import Op, Tensor, TensorOp, TensorTuple, TensorTupleOp, Value  # noqa: F401
from ..backend_selection import BACKEND, NDArray, array_api  # noqa: F401

# Every op class and function is generated from the op rows of csrc/ops.def.
_CLASSES = list(_C.OP_CLASSES)
_FUNCTIONS = list(_C.OP_FUNCTIONS)
globals().update({name: getattr(_C, name) for name in _CLASSES + _FUNCTIONS})

__all__ = _CLASSES + _FUNCTIONS + [
    "Tensor", "TensorTuple", "Value", "Op", "TensorOp", "TensorTupleOp", "NDArray",
    "array_api", "BACKEND",
]
