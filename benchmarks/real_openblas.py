"""Import first in a benchmark: compare against the real OpenBLAS.

This machine sets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which hold
NumPy's OpenBLAS back. Importing this module (before NumPy) restarts the
script once without them, for that command alone; `describe()` says which
kernel OpenBLAS then uses (threadpoolctl). Never used by tests or CI.
"""
import os
import sys

BAD_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

if any(k in os.environ for k in BAD_ENV):
    _env = {k: v for k, v in os.environ.items() if k not in BAD_ENV}
    os.execve(sys.executable, [sys.executable] + sys.argv, _env)


def describe() -> str:
    """The BLAS NumPy loaded: library, version, kernel (architecture), threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    found = [f"{i['internal_api']} {i.get('version')} kernel {i.get('architecture')}, "
             f"{i['num_threads']} threads" for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(found) or "none"
