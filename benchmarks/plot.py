"""Plot the JSON files the benchmarks write (`make bench`: benchmarks/results/).

    python benchmarks/plot.py PATH [PATH ...] [--out-dir DIR]

For each PATH, by the benchmark that wrote it:
- bench_ndarray: NAME_matmul.png (GFLOP/s of needle, NumPy and PyTorch for
  every matmul case, one row of panels per thread count, one column per
  dtype) and NAME_ratio.png (needle's speed over NumPy's and PyTorch's).
- bench_train_mlp, bench_seq_step: NAME.png, needle / PyTorch for time, peak
  memory and training memory of each loop (below 1: needle better).
1.0 is marked on every ratio; each figure's title names the CPU it came from.
PNGs go beside PATH unless --out-dir is given.
"""
from __future__ import annotations

import argparse
import json
import os
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LIBS = ("needle", "numpy", "torch")
COLORS = {"needle": "tab:blue", "numpy": "tab:orange", "torch": "tab:green",
          "seconds": "tab:blue", "peak_mb": "tab:purple", "train_mb": "tab:red"}


def title(report: dict) -> str:
    cfg = report.get("needle_config", {})
    extra = (f"; needle {cfg['kernel']}, NumPy {report.get('numpy_blas', '?')}"
             if cfg else "")
    return (f"{report.get('benchmark', '?')} on {report.get('cpu', '?')}{extra}; "
            f"{report.get('date', '')}, load {report.get('load_average', '?')}")


def bars(ax, labels: list, series: dict, ylabel: str, one: bool) -> None:
    """Grouped bars: series maps a legend name to one value per label."""
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        offset = (k - (len(series) - 1) / 2) * width
        ax.bar([x + offset for x in range(len(labels))], values, width, label=name,
               color=COLORS.get(name.split(" / ")[-1], None))
    if one:  # ratios: a log scale, so that 2x and 0.5x are as far from 1.0
        ax.set_yscale("log")
        ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(range(len(labels))), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def save(fig, report: dict, out: str) -> None:
    fig.suptitle(textwrap.fill(title(report), 110), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def plot_matmul(report: dict, out: str, ratio: bool) -> None:
    """One panel per (threads, dtype): GFLOP/s per library, or needle's speed ratios."""
    runs = [r for r in report["runs"] if r["section"] == "matmul"]
    threads = sorted({r["threads"] for r in runs})
    dtypes = sorted({r["dtype"] for r in runs})
    ncases = max(sum(1 for r in runs if r["threads"] == t and r["dtype"] == d)
                 for t in threads for d in dtypes)
    fig, axes = plt.subplots(len(threads), len(dtypes), squeeze=False,
                             figsize=(max(8, 0.45 * ncases) * len(dtypes), 4.2 * len(threads)))
    for i, t in enumerate(threads):
        for j, d in enumerate(dtypes):
            cell = [r for r in runs if r["threads"] == t and r["dtype"] == d]
            if ratio:
                series = {f"needle / {lib}": [r["needle"] / r[lib] for r in cell]
                          for lib in ("numpy", "torch")}
                ylabel = "speed ratio (above 1: needle faster)"
            else:
                series = {lib: [r[lib] for r in cell] for lib in LIBS}
                ylabel = "GFLOP/s"
            bars(axes[i][j], [r["case"] for r in cell], series, ylabel, ratio)
            axes[i][j].set_title(f"matmul {d}, {t} thread(s)")
    save(fig, report, out)


def training_rows(report: dict) -> list:
    """(label, {metric: needle / torch}) for bench_train_mlp and bench_seq_step."""
    if report["benchmark"] == "bench_seq_step":
        cfg, r = report["config"], report["ratio"]
        label = f"{cfg['model']} step, hidden {cfg['hidden']}"
        return [(label, {"seconds": r["median"], "peak_mb": r["peak_mb"],
                         "train_mb": r["train_mb"]})]
    return [(f"{r['loop']} {r['hidden']}", r["ratio"]) for r in report["results"]]


def plot_training(report: dict, out: str) -> None:
    rows = training_rows(report)
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(rows)), 4.6))
    bars(ax, [label for label, _ in rows],
         {m: [r[m] for _, r in rows] for m in ("seconds", "peak_mb", "train_mb")},
         "needle / PyTorch (below 1: needle better)", True)
    save(fig, report, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", help="JSON files the benchmarks wrote")
    ap.add_argument("--out-dir", default="", help="where the PNGs go (default: beside each)")
    args = ap.parse_args()
    for path in args.paths:
        with open(path) as f:
            report = json.load(f)
        stem = os.path.splitext(os.path.basename(path))[0]
        prefix = os.path.join(args.out_dir or os.path.dirname(os.path.abspath(path)), stem)
        kind = report.get("benchmark", "bench_ndarray")
        if kind == "bench_ndarray":
            plot_matmul(report, prefix + "_matmul.png", ratio=False)
            plot_matmul(report, prefix + "_ratio.png", ratio=True)
        elif kind in ("bench_train_mlp", "bench_seq_step"):
            plot_training(report, prefix + ".png")
        else:
            print(f"{path}: nothing to plot for {kind}")


if __name__ == "__main__":
    main()
