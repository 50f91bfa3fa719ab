"""needle.nn convolution modules (API.md 6.2): Conv, and BatchNorm2d (defined
beside BatchNorm1d in nn_basic, re-exported here as in the course's layout).

Both take and return NCHW tensors; Conv works in NHWC inside (two transposes
each way) and calls ops.conv, a single C op whose gradients are again convs.
Construction order is the order of the random draws: weight, then bias.

>>> import needle as ndl
>>> conv = ndl.nn.Conv(3, 8, kernel_size=3)
>>> conv(ndl.init.rand(2, 3, 16, 16)).shape
(2, 8, 16, 16)
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

from needle import init, ops
from needle.autograd import Tensor

from .nn_basic import BatchNorm2d, Module, Parameter

__all__ = ["Conv", "BatchNorm2d"]


class Conv(Module):
    """2-D convolution of NCHW input with a (K, K, C_in, C_out) weight.

    Padding is K // 2 ("same" output size for odd K at stride 1). Tuple
    `kernel_size` / `stride` use their first element (square kernels only).

    >>> import needle as ndl
    >>> conv = ndl.nn.Conv(3, 8, kernel_size=3, stride=2)
    >>> conv.weight.shape
    (3, 3, 3, 8)
    >>> conv(ndl.init.ones(2, 3, 28, 28)).shape
    (2, 8, 14, 14)
    """

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, ...]], stride: Union[int, Tuple[int, ...]] = 1,
                 bias: bool = True, device=None, dtype: str = "float32"):
        super().__init__()
        if isinstance(kernel_size, tuple):
            kernel_size = kernel_size[0]
        if isinstance(stride, tuple):
            stride = stride[0]
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = kernel_size // 2
        k2 = kernel_size * kernel_size
        self.weight = Parameter(init.kaiming_uniform(
            in_channels * k2, out_channels * k2,
            shape=(kernel_size, kernel_size, in_channels, out_channels),
            device=device, dtype=dtype))
        self.bias: Optional[Parameter] = None
        if bias:
            bound = 1.0 / math.sqrt(in_channels * k2)
            self.bias = Parameter(init.rand(out_channels, low=-bound, high=bound,
                                            device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        """x (N, C_in, H, W) -> (N, C_out, H', W')."""
        nhwc = x.transpose((1, 2)).transpose((2, 3))
        y = ops.conv(nhwc, self.weight, self.stride, self.kernel_size // 2)
        if self.bias is not None:
            y = y + self.bias.reshape((1, 1, 1, self.out_channels)).broadcast_to(y.shape)
        return y.transpose((2, 3)).transpose((1, 2))
