"""The timing harness of the side-by-side benchmarks (bench_conv_seq.py,
bench_transformer.py): each library runs in its own child process (the two
thread pools spin and would disturb each other on 2 cores), which times a step
as the best of several repetitions after a warm-up and prints its figures as
one JSON line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def use_repo() -> None:
    """Import needle and apps/models.py from this checkout."""
    sys.path[:0] = [ROOT, os.path.join(ROOT, "apps")]


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def measure(step: Callable[[], object], reps: int) -> Dict[str, float]:
    """{"ms": the best of `reps` timed calls after one warm-up call, "peak_mb": the
    peak resident size during the timed calls (VmHWM, reset after the warm-up through
    /proc/self/clear_refs) less the resident size before them, "rss_mb": that peak}."""
    step()  # warm-up (allocations, kernel choice, thread pool)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
    except OSError:
        pass
    base = _status_kb("VmRSS")
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return {"ms": best * 1e3, "peak_mb": (_status_kb("VmHWM") - base) / 1024,
            "rss_mb": _status_kb("VmHWM") / 1024}


def best_ms(step: Callable[[], object], reps: int) -> float:
    """The best of `reps` timed calls after a warm-up, in ms."""
    return measure(step, reps)["ms"]


def thread_env(threads: Optional[int]) -> Dict[str, str]:
    """This process's environment, with both libraries' thread counts set if given."""
    env = dict(os.environ)
    if threads:
        env.update(NEEDLE_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    return env


def run_child(script: str, args: Sequence[str], env: Dict[str, str], what: str) -> dict:
    """Run `python script --child *args` and return the JSON of its last line; exit
    with its stderr's tail, naming `what`, if it fails."""
    out = subprocess.run([sys.executable, script, "--child", *args], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{what} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
