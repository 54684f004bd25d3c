"""What every benchmark prints: the machine it ran on, and one summary line per figure.

A figure is an absolute number printed with its same-run baseline, or a ratio to it; the verdict
compares it with the issue's target for this 2-core machine.
"""
from __future__ import annotations

import os
import platform
import shlex
import statistics
from dataclasses import dataclass

import psutil


def machine() -> str:
    """One line that names the machine: results from different machines are not comparable."""
    cpu = platform.processor() or "unknown cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine nproc={os.cpu_count()} mem={mem:.1f}GiB cpu={shlex.quote(cpu)} "
            f"python={platform.python_version()} kernel={platform.release()} loadavg=\"{load}\"")


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank: p95 of 500 calls is the 475th fastest."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    baseline: str       # what the baseline is, with its value from this run
    target: str = ""    # the target, as text
    met: bool | None = None  # None: no target, or the measurement could not be made

    def line(self) -> str:
        verdict = "n/a" if self.met is None else "met" if self.met else "MISSED"
        return (f"summary figure={self.name} value={_num(self.value)}{self.unit} baseline={shlex.quote(self.baseline)} "
                f"target={shlex.quote(self.target or 'none')} verdict={verdict}")


def _num(value: float) -> str:
    if value != value:  # NaN: nothing was measured
        return "nan"
    if value == int(value):
        return str(int(value))
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def ms(seconds: float) -> str:
    return f"{_num(seconds * 1000)}ms"
