"""PNG figures for the report (matplotlib, Agg: no display): latency with fault windows shaded,
resource series with their fitted trend, and the error-kind distribution.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

from harness.checkers.checkers import Summary
from harness.faults.kinds import KINDS
from harness.history.history import Fault, Op

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen before pyplot loads

COLORS = {"ok": "tab:green", "fail": "tab:red", "unknown": "tab:gray"}


def latency(ops: list[Op], faults: list[Fault], t0: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for f in faults:
        color = KINDS[f.fault].color if f.fault in KINDS else "gray"
        ax.axvspan((f.start - t0) / 60, (f.end - t0) / 60, color=color, alpha=0.2, label=f.fault)
    for outcome, color in COLORS.items():
        pts = [((o.start - t0) / 60, (o.latency_ms or 0) / 1000) for o in ops if o.outcome == outcome and o.end]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, s=6, c=color, label=f"{outcome} ({len(pts)})", marker="x" if outcome == "unknown" else "o")
    ax.set_yscale("log")
    ax.set_xlabel("minutes since start")
    ax.set_ylabel("latency (s)")
    ax.set_title("Operation latency; shaded: fault windows")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    if unique:  # matplotlib warns about an empty legend, and warnings are errors under pytest
        ax.legend(unique.values(), unique.keys(), fontsize=7, ncol=4, loc="upper right")
    return _save(fig, path)


def resources(samples: list[dict[str, Any]], summary: Summary, t0: float, warmup_s: float, path: Path) -> Path:
    metrics = (("rss", "RSS (MB)", 1 / 2**20), ("fds", "open fds", 1.0), ("threads", "threads", 1.0))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(12, 10), sharex=True)
    lives: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for s in samples:
        lives.setdefault((s["process"], s["pid"]), []).append(s)
    names = sorted({p for p, _ in lives})
    palette = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    trends = {(t.process, t.pid, t.metric): t for t in summary.trends}
    for ax, (metric, label, scale) in zip(axes, metrics, strict=True):
        for (process, pid), series in sorted(lives.items()):
            xs = [(s["t"] - t0) / 60 for s in series]
            ys = [s[metric] * scale for s in series]
            first = process not in ax.get_legend_handles_labels()[1]
            ax.plot(xs, ys, color=palette[process], linewidth=0.8, label=process if first else None)
            t = trends.get((process, pid, metric))
            if t is not None and t.judged:
                # Sen's slope through the median of the part after warm-up: the line the checker judged.
                x0 = (series[0]["t"] + warmup_s - t0) / 60
                x1, mid = xs[-1], (x0 + xs[-1]) / 2
                per_min = t.slope_per_h * scale / 60
                ax.plot([x0, x1], [t.median * scale + per_min * (x0 - mid), t.median * scale + per_min * (x1 - mid)],
                        linestyle="--", color=palette[process], linewidth=1.2)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if lives:
        axes[0].legend(fontsize=7, ncol=4, loc="upper left")
    axes[0].set_title("Resources per process (a restart starts a new line); dashed: fitted trend")
    axes[-1].set_xlabel("minutes since start")
    return _save(fig, path)


def errors(summary: Summary, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    kinds = sorted(set(summary.errors) | set(summary.errors_steady))
    xs = range(len(kinds))
    ax.bar([x - 0.2 for x in xs], [summary.errors.get(k, 0) for k in kinds], width=0.4, label="all ops")
    ax.bar([x + 0.2 for x in xs], [summary.errors_steady.get(k, 0) for k in kinds], width=0.4,
           label="outside fault windows")
    ax.set_xticks(list(xs), kinds, rotation=30, ha="right")
    ax.set_ylabel("operations")
    ax.set_title(f"Errors by error_kind ({summary.all.ops} operations)")
    ax.legend()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
