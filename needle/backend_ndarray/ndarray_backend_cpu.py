"""The CPU kernel module (API.md 2.3): `Array`, `__tile_size__`, `ewise_add`, ...

A thin binding over the same C kernels NDArray uses (csrc/ndarray/kernel_module.c).
"""
from needle._C import cpu_kernels as _k

globals().update({k: v for k, v in vars(_k).items() if not k.startswith("__") or k in (
    "__device_name__", "__tile_size__")})
