"""Which array backend tensors use (API.md 1.3): NEEDLE_BACKEND=nd (default) or np."""
import os

__all__ = ["BACKEND", "array_api", "NDArray", "Device", "cpu", "default_device", "all_devices"]

BACKEND = os.environ.get("NEEDLE_BACKEND", "nd")

if BACKEND == "nd":
    from . import backend_ndarray as array_api
    from .backend_ndarray import (  # noqa: F401
        BackendDevice as Device,
        NDArray,
        all_devices,
        cpu,
        cpu_numpy,
        cuda,
        default_device,
    )

    __all__ += ["cuda", "cpu_numpy"]
elif BACKEND == "np":
    import numpy as array_api  # noqa: F401
    from .backend_numpy import Device, all_devices, cpu, default_device  # noqa: F401

    NDArray = array_api.ndarray
else:
    raise RuntimeError(
        f"Unknown needle array backend {BACKEND!r}: set NEEDLE_BACKEND to 'nd' or 'np'")

from needle import _C as _core  # noqa: E402

_core._set_backend(BACKEND, cpu() if BACKEND == "np" else None)
