"""needle.ops: every op class and op function of API.md 4 (all C, in needle._C).

>>> import needle as ndl
>>> ndl.ops.summation(ndl.ops.exp(ndl.Tensor([[0.0, 1.0]])), axes=(1,))
needle.Tensor([3.7182817])
"""
from needle import _C

from ..autograd import Op, Tensor, TensorOp, TensorTuple, TensorTupleOp, Value  # noqa: F401
from ..backend_selection import BACKEND, NDArray, array_api  # noqa: F401

_CLASSES = [
    "EWiseAdd", "AddScalar", "EWiseMul", "MulScalar", "EWisePow", "PowerScalar", "EWiseDiv",
    "DivScalar", "Negate", "Log", "Exp", "ReLU", "Tanh", "Transpose", "Reshape", "BroadcastTo",
    "Summation", "Flip", "Dilate", "UnDilate", "MatMul", "LogSoftmax", "LogSumExp",
    "MakeTensorTuple", "TupleGetItem", "FusedAddScalars", "Stack", "Split",
]
_FUNCTIONS = [
    "add", "add_scalar", "multiply", "mul_scalar", "power", "power_scalar", "divide",
    "divide_scalar", "negate", "log", "exp", "relu", "tanh", "transpose", "reshape",
    "broadcast_to", "summation", "flip", "dilate", "undilate", "matmul", "logsoftmax",
    "logsumexp", "make_tuple", "tuple_get_item", "fused_add_scalars", "stack", "split",
]
globals().update({name: getattr(_C, name) for name in _CLASSES + _FUNCTIONS})

__all__ = _CLASSES + _FUNCTIONS + [
    "Tensor", "TensorTuple", "Value", "Op", "TensorOp", "TensorTupleOp", "NDArray",
    "array_api", "BACKEND",
]
