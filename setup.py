"""Build needle's C core: the extension `needle._C` from csrc/**/*.c.

Environment switches:
  NEEDLE_WERROR=1   warnings are errors (CI)
  NEEDLE_ASAN=1     build with AddressSanitizer + UBSan (see `make asan`)
  NEEDLE_DEBUG=1    -O0 -g, asserts on
"""
import glob
import os

import numpy as np
from setuptools import Extension, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def c_sources() -> list:
    found = glob.glob("csrc/**/*.c", recursive=True)
    return sorted(s for s in found if not s.startswith(os.path.join("csrc", "cuda")))


compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers", "-Wno-cast-function-type",
                "-pthread", "-fno-strict-aliasing", "-fno-math-errno"]
link_args = ["-pthread", "-lm"]
if _flag("NEEDLE_ASAN"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
           "-fno-sanitize-recover=undefined"]
    compile_args += ["-O1", "-g"] + san
    link_args += san
elif _flag("NEEDLE_DEBUG"):
    compile_args += ["-O0", "-g"]
else:
    compile_args += ["-O3", "-DNDEBUG"]
if _flag("NEEDLE_WERROR"):
    compile_args.append("-Werror")

ext = Extension(
    "needle._C",
    sources=c_sources(),
    include_dirs=["csrc", "csrc/ndarray", np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    depends=glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.def", recursive=True),
)

setup(ext_modules=[ext])
