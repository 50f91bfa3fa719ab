"""Under `make asan` only: OpenMPI's own allocations out of LeakSanitizer's sight.

test_distributed.py puts this directory on the ranks' PYTHONPATH (and imports
it in the pytest process), so Python runs it at start-up. OpenMPI 4.1 does not
free what MPI_Init sets up, and frees little of it at MPI_Finalize, which
then dlcloses its components (4.1 has no mca_base_component_disable_dlclose),
so those allocations carry stacks into unmapped code that no suppression in
.ci/lsan.supp can name. They are made on this thread inside MPI_Init (the
import of mpi4py.MPI) and MPI_Finalize (mpi4py runs it after the atexit
callbacks): LSan is told to ignore allocations made there
(__lsan_disable/__lsan_enable), nothing else. Everything allocated between,
needle's buffers in the collectives included, is still leak-checked.
"""
import atexit
import ctypes
import os


def _pin_components() -> None:
    """Keep the OpenMPI components loaded now mapped until exit (RTLD_NODELETE).

    What they keep in their own statics then stays reachable, and what they
    allocate on OpenMPI's progress threads has a stack LSan can name."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "/openmpi3/mca_" in line}
    for path in sorted(paths):
        ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_NOLOAD | os.RTLD_NODELETE)


def quiet_openmpi() -> None:
    """Initialize MPI now with LeakSanitizer off; off again from atexit on."""
    if not os.environ.get("NEEDLE_ASAN_RUN"):
        return
    runtime = ctypes.CDLL(None)
    disable = getattr(runtime, "__lsan_disable", None)
    enable = getattr(runtime, "__lsan_enable", None)
    if disable is None or enable is None:  # not under the sanitizer preload
        return
    disable()
    try:
        from mpi4py import MPI  # noqa: F401  (MPI_Init_thread)
    except ImportError:
        return
    finally:
        enable()
    _pin_components()
    atexit.register(disable)  # registered first, run last: before MPI_Finalize


quiet_openmpi()
