"""Build needle's C core: the extension `needle._C` from csrc/**/*.c.

Environment switches:
  NEEDLE_WERROR=1   warnings are errors (CI)
  NEEDLE_ASAN=1     build with AddressSanitizer + UBSan (see `make asan`)
  NEEDLE_DEBUG=1    -O0 -g, asserts on
  NEEDLE_CUDA=0     do not build needle._cuda; =1: nvcc missing is an error;
                    unset: build it when nvcc is found (CUDA block below)
  NEEDLE_CUDA_EMU=1 also build needle._cuda_emu, the CUDA kernels on the CPU
                    (a test harness; emulator block below; no nvcc needed)
  NEEDLE_AVX512_EMU=1  the AVX-512 matmul kernels compiled for AVX2 against
                    csrc/ndarray/avx512_emu.h, so NEEDLE_MATMUL_KERNEL=avx512 runs
                    them on a CPU without AVX-512 (a test build: `make avx512-emu`)
  NEEDLE_TSAN=1     with NEEDLE_CUDA_EMU=1: the emulator under ThreadSanitizer
                    (see `make cuda-emu-tsan`; needle._C is not instrumented)
"""
import glob
import os

import numpy as np
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def c_sources() -> list:
    found = glob.glob("csrc/**/*.c", recursive=True)
    return sorted(s for s in found if not s.startswith(os.path.join("csrc", "cuda")))


# -ffp-contract=off: every FMA is written (Note [AVX-512 elementwise] in
# csrc/ndarray/cpu_ewise.c): gcc fuses no a*b + c of its own, on any target
compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers", "-Wno-cast-function-type",
                "-pthread", "-fno-strict-aliasing", "-fno-math-errno", "-ffp-contract=off"]
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
# Note [AVX-512 without AVX-512] (csrc/ndarray/avx512_emu.h): needle._C only
c_macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if _flag("NEEDLE_AVX512_EMU"):
    c_macros.append(("NDL_AVX512_EMU", "1"))
if _flag("NEEDLE_BASELINE"):  # the x86-64 baseline kernels only (`make baseline`)
    c_macros.append(("NDL_CPU_BASELINE_ONLY", "1"))

ext = Extension(
    "needle._C",
    sources=c_sources(),
    include_dirs=["csrc", "csrc/ndarray", np.get_include()],
    define_macros=c_macros,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    depends=glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.def", recursive=True),
)

# ---- CUDA: needle._cuda (csrc/cuda) ---------------------------------------
# The .cu kernels are compiled by nvcc (sm_80, sm_90, PTX for newer GPUs),
# module.c by the C compiler; cudart is linked statically, so the module
# imports on a machine with no driver and reports why in probe().
CUDA_ARCHS = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
              "-gencode=arch=compute_90,code=compute_90"]


def cuda_home():
    """The CUDA toolkit root (CUDA_HOME, else from nvcc's location), or None."""
    import shutil
    import subprocess
    if os.environ.get("NEEDLE_CUDA", None) == "0":
        return None
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if nvcc and os.path.exists(nvcc) and not home:
        # NOTE: nvcc may be a wrapper script; ask it where its toolkit is.
        out = subprocess.run([nvcc, "-dryrun", "-c", "x.cu"], capture_output=True, text=True)
        tops = [ln.split("=", 1)[1].strip() for ln in out.stderr.splitlines()
                if ln.startswith("#$ TOP=")]
        home = os.path.normpath(tops[0]) if tops else os.path.dirname(
            os.path.dirname(os.path.realpath(nvcc)))
    if not home or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        if _flag("NEEDLE_CUDA"):
            raise SystemExit("NEEDLE_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
        return None
    return home


def write_launch_bounds(outdir: str, srcs: list) -> str:
    """emu_bounds.inc: a row {"kernel", (n)}, for each `__launch_bounds__(n) kernel`
    in srcs (Note [Launch bounds under the emulator], csrc/cuda/emu/emu_bounds.cc);
    rewritten only when it changes. Returns its path."""
    import re
    pat = re.compile(r"__launch_bounds__\s*\(([^,()]*(?:\([^()]*\))?[^,()]*)[^)]*\)\s*(\w+)\s*\(")
    rows, seen = [], {}
    for src in sorted(srcs):
        with open(src) as f:
            # not in comments, nor the emulator's own #define of the qualifier
            text = re.sub(r"/\*.*?\*/|//[^\n]*|#\s*define[^\n]*", "", f.read(), flags=re.S)
        for expr, name in pat.findall(text):
            if name in seen and seen[name] != expr.strip():
                raise SystemExit(f"{src}: kernel {name} has two launch bounds")
            if name not in seen:
                seen[name] = expr.strip()
                rows.append(f'{{"{name}", ({expr.strip()})}}, /* {src} */\n')
    path = os.path.join(outdir, "emu_bounds.inc")
    text = "/* generated by setup.py (write_launch_bounds): do not edit */\n" + "".join(rows)
    os.makedirs(outdir, exist_ok=True)
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    return path


def compile_all(name, cmds, env=None):
    """Run the compiler commands `cmds` (each [compiler, ..., "-c", src, ...]) one
    per core; the first that fails stops the build with its output."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    def compile_one(cmd):
        print(" ".join(cmd))
        return subprocess.run(cmd, capture_output=True, text=True, env=env)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for res in pool.map(compile_one, cmds):
            src = res.args[res.args.index("-c") + 1]
            if res.returncode != 0:
                raise SystemExit(f"{name}: {src} failed:\n{res.stdout}{res.stderr}")
            if res.stdout or res.stderr:
                print(res.stdout + res.stderr)


class build_ext_cuda(build_ext):
    """build_ext that compiles an extension's .cu sources with nvcc first."""

    def build_extension(self, ext):
        if getattr(ext, "emu_cxx", None):
            self.build_emu_objects(ext)
        cu = [s for s in ext.sources if s.endswith(".cu")]
        if cu:
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            home, objs = ext.cuda_home, []
            flags = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Icsrc", "-Icsrc/ndarray",
                     "-Icsrc/cuda", "--expt-relaxed-constexpr", "-lineinfo",
                     "-Xcompiler", "-Wall,-Wextra,-Wno-unused-parameter"] + CUDA_ARCHS
            if _flag("NEEDLE_WERROR"):  # host and device warnings are errors (CI)
                flags += ["-Werror=all-warnings", "-Xcompiler", "-Werror"]
            env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
            todo = []
            for src in cu:
                obj = os.path.join(self.build_temp, src[:-3] + ".o")
                os.makedirs(os.path.dirname(obj), exist_ok=True)
                deps = [src] + ext.depends
                if self.force or not os.path.exists(obj) or any(
                        os.path.getmtime(d) > os.path.getmtime(obj) for d in deps):
                    todo.append([os.path.join(home, "bin", "nvcc"), "-c", src, "-o", obj] + flags)
                objs.append(obj)
            compile_all(ext.name, todo, env)
            ext.extra_objects = objs
            ext.depends = ext.depends + cu + objs  # a rebuilt object relinks the module
        super().build_extension(ext)

    def build_emu_objects(self, ext):
        """needle._cuda_emu: the .cu and .cc sources with the host C++ compiler."""
        srcs = [s for s in ext.sources if s.endswith((".cu", ".cc"))]
        ext.sources = [s for s in ext.sources if s not in srcs]
        bounds = write_launch_bounds(os.path.join(self.build_temp, "emu"), srcs)
        todo, objs = [], []
        for src in srcs:
            obj = os.path.join(self.build_temp, "emu", src + ".o")
            os.makedirs(os.path.dirname(obj), exist_ok=True)
            deps = [src] + ext.depends + ([bounds] if src.endswith("emu_bounds.cc") else [])
            if self.force or not os.path.exists(obj) or any(
                    os.path.getmtime(d) > os.path.getmtime(obj) for d in deps):
                flags = ext.emu_flags + ["-I" + os.path.dirname(bounds)] + (
                    ext.emu_kernel_flags if src not in EMU_RUNTIME else [])
                todo.append([ext.emu_cxx, "-x", "c++", "-c", src, "-o", obj] + flags)
            objs.append(obj)
        compile_all(ext.name, todo)
        ext.extra_objects = objs
        ext.depends = ext.depends + srcs + objs


extensions = [ext]
CUDA_HOME = cuda_home()
if CUDA_HOME is not None:
    cuda_lib = next((d for d in ("lib64", "lib", "lib/x64") if os.path.exists(
        os.path.join(CUDA_HOME, d, "libcudart_static.a"))), "lib64")
    cuda_ext = Extension(
        "needle._cuda",
        sources=sorted(glob.glob("csrc/cuda/*.c") + glob.glob("csrc/cuda/*.cu")),
        include_dirs=["csrc", "csrc/ndarray", "csrc/cuda", os.path.join(CUDA_HOME, "include")],
        extra_compile_args=[a for a in compile_args if not a.startswith("-fsanitize")],
        extra_link_args=["-pthread"],
        library_dirs=[os.path.join(CUDA_HOME, cuda_lib)],
        libraries=["cudart_static", "dl", "rt", "stdc++"],
        depends=glob.glob("csrc/cuda/*.h") + glob.glob("csrc/cuda/*.cuh")
        + glob.glob("csrc/ndarray/*.h") + ["csrc/ops.def"],
    )
    cuda_ext.cuda_home = CUDA_HOME
    extensions.append(cuda_ext)

# ---- the CUDA emulator: needle._cuda_emu (csrc/cuda, csrc/cuda/emu) ------
# The same kernels compiled by the host C++ compiler against the emulated
# runtime (Note [The CUDA emulator], csrc/cuda/emu/cuda_runtime.h): a test
# harness that runs them on the CPU (NEEDLE_CUDA_EMU=1 at run time selects
# it; `make cuda-emu`). Built when NEEDLE_CUDA_EMU=1; no nvcc needed. Same
# warnings policy and sanitizers as needle._C. NEEDLE_TSAN=1: ThreadSanitizer
# instruments the kernels (the .cu sources, emu_selftest.cc) but not the
# emulator's runtime (EMU_RUNTIME: its bookkeeping is no GPU thread's access;
# it calls TSan's interface itself, -DNDL_EMU_TSAN), and not needle._C: Note
# [Races under ThreadSanitizer] in csrc/cuda/emu/emu_exec.cc, `make cuda-emu-tsan`.
EMU_RUNTIME = ["csrc/cuda/emu/emu_bounds.cc", "csrc/cuda/emu/emu_exec.cc",
               "csrc/cuda/emu/emu_fiber.cc", "csrc/cuda/emu/emu_runtime.cc",
               "csrc/cuda/emu/emu_wmma.cc"]
if _flag("NEEDLE_CUDA_EMU"):
    emu_ext = Extension(
        "needle._cuda_emu",
        sources=sorted(glob.glob("csrc/cuda/*.c") + glob.glob("csrc/cuda/*.cu")
                       + glob.glob("csrc/cuda/emu/*.cc")),
        include_dirs=["csrc/cuda/emu", "csrc", "csrc/ndarray", "csrc/cuda"],
        define_macros=[("NDL_CUDA_EMU", "1")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        libraries=["stdc++"],
        depends=glob.glob("csrc/cuda/*.h") + glob.glob("csrc/cuda/*.cuh")
        + glob.glob("csrc/cuda/emu/*.h") + glob.glob("csrc/ndarray/*.h") + ["csrc/ops.def"],
    )
    emu_ext.emu_cxx = os.environ.get("CXX", "g++")
    # NOTE: -Wno-unknown-pragmas: nvcc's #pragma unroll means nothing to g++
    emu_ext.emu_flags = ["-std=gnu++17", "-fPIC", "-DNDL_CUDA_EMU=1", "-Wno-unknown-pragmas",
                         "-Icsrc/cuda/emu", "-Icsrc",
                         "-Icsrc/ndarray", "-Icsrc/cuda"] + [
                             a for a in compile_args if a != "-std=gnu11"]
    emu_ext.emu_kernel_flags = []
    if _flag("NEEDLE_TSAN"):
        if _flag("NEEDLE_ASAN"):
            raise SystemExit("NEEDLE_TSAN=1 and NEEDLE_ASAN=1 do not combine")
        emu_ext.emu_flags = [a for a in emu_ext.emu_flags if a not in ("-O3", "-DNDEBUG")] + [
            "-O1", "-g", "-fno-omit-frame-pointer", "-DNDL_EMU_TSAN=1"]
        emu_ext.emu_kernel_flags = ["-fsanitize=thread"]
        emu_ext.extra_link_args = link_args + ["-fsanitize=thread"]
    extensions.append(emu_ext)

setup(ext_modules=extensions, cmdclass={"build_ext": build_ext_cuda})
