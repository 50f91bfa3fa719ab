"""Plot the figures `bench_ndarray.py --json PATH` wrote.

    python benchmarks/plot.py PATH [--out PREFIX]

Writes PREFIX_matmul.png (GFLOP/s of needle, NumPy and PyTorch for every
matmul case, one row of panels per thread count, one column per dtype) and
PREFIX_ratio.png (needle's speed over NumPy's and PyTorch's, 1.0 marked);
PREFIX defaults to PATH without its .json.
"""
from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LIBS = ("needle", "numpy", "torch")
COLORS = {"needle": "tab:blue", "numpy": "tab:orange", "torch": "tab:green"}


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def grid(report: dict):
    """(thread counts, dtypes, {(threads, dtype): [runs]}) of the matmul runs."""
    runs = [r for r in report["runs"] if r["section"] == "matmul"]
    threads = sorted({r["threads"] for r in runs})
    dtypes = sorted({r["dtype"] for r in runs})
    cells = {(t, d): [r for r in runs if r["threads"] == t and r["dtype"] == d]
             for t in threads for d in dtypes}
    return threads, dtypes, cells


def subplots(nrows: int, ncols: int, ncases: int):
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(8, 0.45 * ncases) * ncols, 4.2 * nrows),
                             squeeze=False)
    return fig, axes


def title(report: dict) -> str:
    cfg = report.get("needle_config", {})
    return (f"{report.get('cpu', '?')}; needle {cfg.get('kernel', '?')}, "
            f"NumPy {report.get('numpy_blas', '?')}; {report.get('date', '')}")


def plot_speed(report: dict, out: str) -> None:
    threads, dtypes, cells = grid(report)
    ncases = max(len(v) for v in cells.values())
    fig, axes = subplots(len(threads), len(dtypes), ncases)
    width = 0.27
    for i, t in enumerate(threads):
        for j, d in enumerate(dtypes):
            ax, runs = axes[i][j], cells[(t, d)]
            xs = range(len(runs))
            for k, lib in enumerate(LIBS):
                ax.bar([x + (k - 1) * width for x in xs], [r[lib] for r in runs], width,
                       label=lib, color=COLORS[lib])
            ax.set_xticks(list(xs), [r["case"] for r in runs], rotation=60, ha="right",
                          fontsize=8)
            ax.set_ylabel("GFLOP/s")
            ax.set_title(f"matmul {d}, {t} thread(s)")
            ax.legend(fontsize=8)
    fig.suptitle(title(report), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_ratio(report: dict, out: str) -> None:
    threads, dtypes, cells = grid(report)
    ncases = max(len(v) for v in cells.values())
    fig, axes = subplots(len(threads), len(dtypes), ncases)
    width = 0.4
    for i, t in enumerate(threads):
        for j, d in enumerate(dtypes):
            ax, runs = axes[i][j], cells[(t, d)]
            xs = range(len(runs))
            for k, lib in enumerate(("numpy", "torch")):
                ax.bar([x + (k - 0.5) * width for x in xs],
                       [r["needle"] / r[lib] for r in runs], width,
                       label=f"needle / {lib}", color=COLORS[lib])
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_xticks(list(xs), [r["case"] for r in runs], rotation=60, ha="right",
                          fontsize=8)
            ax.set_ylabel("speed ratio (above 1: needle faster)")
            ax.set_title(f"matmul {d}, {t} thread(s)")
            ax.legend(fontsize=8)
    fig.suptitle(title(report), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path", help="JSON written by bench_ndarray.py --json")
    ap.add_argument("--out", default="", help="prefix of the PNG files")
    args = ap.parse_args()
    report = load(args.path)
    prefix = args.out or os.path.splitext(args.path)[0]
    plot_speed(report, prefix + "_matmul.png")
    plot_ratio(report, prefix + "_ratio.png")
    print(f"wrote {prefix}_matmul.png, {prefix}_ratio.png")


if __name__ == "__main__":
    main()
