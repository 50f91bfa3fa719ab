"""What the benchmarks share: timing, memory, child processes and JSON results.

- best_time(fn, ...): the best seconds per call over several timed runs;
  measure(step, reps): the best time of a step and the peak memory it took.
- rss_mb(), reset_peak(), peak_mb(): this process's memory (Linux /proc).
- run_child(argv, env): run a child process, return the JSON of its last line;
  thread_env(threads): the environment that sets both libraries' threads.
- use_repo(): import needle and apps/models.py from this checkout.
- machine(): the CPU model, core count and load, for every JSON file.
- write_json(path, benchmark, payload): payload + machine() as JSON (the
  files `make bench` leaves in benchmarks/results/ for plot.py).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Callable, Optional

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def use_repo() -> None:
    """Import needle and apps/models.py from this checkout."""
    sys.path[:0] = [ROOT, os.path.join(ROOT, "apps")]


def repeat_times(fn: Callable[[], object], repeats: int, number: Optional[int] = None,
                 min_time: float = 0.0, settle: float = 0.0) -> list[float]:
    """Seconds per call of fn(), one figure for each of `repeats` runs of
    `number` calls.

    number None: one warm-up call, then as many calls as take about min_time."""
    if settle:
        time.sleep(settle)
    if number is None:
        fn()
        t0 = time.perf_counter()
        fn()
        number = max(1, int(min_time / max(time.perf_counter() - t0, 1e-7)))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        out.append((time.perf_counter() - t0) / number)
    return out


def best_time(fn: Callable[[], object], repeats: int, number: Optional[int] = None,
              min_time: float = 0.0, settle: float = 0.0) -> float:
    """Best seconds per call of fn() over `repeats` runs of `number` calls."""
    return min(repeat_times(fn, repeats, number, min_time, settle))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def reset_peak() -> float:
    """Restart the kernel's peak-RSS count (VmHWM) here; returns the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_mb()


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(step: Callable[[], object], reps: int, warmup_counts: bool = False) -> dict:
    """{"ms": the best of `reps` timed calls after one warm-up call, "peak_mb": the
    peak resident size during the timed calls less the resident size before them,
    "rss_mb": that peak}.

    warmup_counts: the base is taken before the warm-up instead, so "peak_mb" is the
    step's whole working set. An allocator that keeps what it frees (glibc's heap
    does, for PyTorch) otherwise hides that working set in the base."""
    def base() -> float:
        try:
            return reset_peak()
        except OSError:
            return rss_mb()
    before = base() if warmup_counts else None
    step()  # warm-up (allocations, kernel choice, thread pool)
    if before is None:
        before = base()
    best = best_time(step, reps, number=1)
    return {"ms": best * 1e3, "peak_mb": peak_mb() - before, "rss_mb": peak_mb()}


def thread_env(threads: Optional[int]) -> dict:
    """This process's environment, with both libraries' thread counts set if given."""
    env = dict(os.environ)
    if threads:
        env.update(NEEDLE_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    return env


def run_child(argv: list, env: Optional[dict] = None, what: str = "child",
              echo_stderr: bool = False) -> dict:
    """Run `python argv...`; the JSON object its last line of stdout prints."""
    out = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{what} failed:\n{out.stderr[-3000:]}")
    if echo_stderr:
        print(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    """The model name, family/model/stepping and widest vector ISA (/proc/cpuinfo),
    e.g. "AMD EPYC (family 25 model 17 stepping 1, avx512f), 2 CPUs"."""
    fields: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first CPU is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    flags = fields.get("flags", "").split()
    isa = next((x for x in ("avx512f", "avx2", "avx") if x in flags), "sse")
    return (f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')} stepping {fields.get('stepping', '?')}, {isa}), "
            f"{os.cpu_count()} CPUs")


def machine() -> dict:
    return {"cpu": cpu_model(), "load_average": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def write_json(path: str, benchmark: str, payload: dict) -> None:
    """Write payload with the benchmark's name and machine() to path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"benchmark": benchmark, **machine(), **payload}, f, indent=1)
    print(f"wrote {path}")
