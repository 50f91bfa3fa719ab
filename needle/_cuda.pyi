"""Stubs for needle._cuda, the CUDA backend module (csrc/cuda/module.c)."""
from typing import Dict, List, Optional, Sequence, Tuple

backend: object  # PyCapsule "needle._cuda.backend": the ndl_backend table

def probe() -> Optional[str]: ...  # None when a GPU is usable, else why not
def device_name() -> str: ...
def synchronize() -> None: ...
def empty_cache() -> None: ...
def memory_stats() -> Dict[str, int]: ...  # {"allocated": bytes, "cached": bytes}
def set_tf32(on: bool) -> bool: ...  # float32 matmul on TF32 tensor cores; returns the previous
def tf32() -> bool: ...  # off unless NEEDLE_CUDA_TF32=1 or set_tf32(True)
def last_error() -> str: ...  # this thread's last CUDA failure (tests)

# Views of the host-side launch logic, which run without a GPU (tests);
# layouts as (shape, strides, offset), strides in elements.
def _merged_offsets(
    shape: Sequence[int], layouts: List[Tuple[Sequence[int], int]]
) -> Tuple[int, List[List[int]]]: ...  # Note [Merged axes]
def _reduce_plan(
    shape: Sequence[int], strides: Sequence[int], axes: Sequence[int]
) -> Tuple[Optional[str], int, int]: ...  # ("cols" | "warps" | "blocks" | None, chunks, len)
