"""6 gate wall time: `harness gate A` and `harness gate A B C` with the full profile's repetitions.

The baseline is the same gates under the quick profile (repeat_scale 0.1 in gates.yaml), in the same
run: what one pass over the cases costs, so the full figure can be read as repetitions, not slowness.
Both run each stage on the pytest-xdist workers gates.yaml names (`--workers N` for all stages instead).
A stage with no scenarios yet is left out and named. A gate that fails stops the run early: its time
is then a lower bound, judged MISSED if already over the target and n/a otherwise.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path

from bench import stacks
from bench.figures import Figure
from harness.cli import GROUPS
from harness.gates import gates
from harness.stack import paths

NAME = "gates"
TARGETS = {"A": 180.0, "A B C": 480.0}


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sets", nargs="+", default=list(TARGETS), help='gate sets to time, e.g. "A" "A B C"')
    p.add_argument("--profile", default="full", choices=gates.PROFILES)
    p.add_argument("--baseline-profile", default="quick", choices=gates.PROFILES)
    p.add_argument("--timeout", type=float, default=3600.0, help="give up on one gate run after this many seconds")
    p.add_argument("--workers", type=int, help="pytest-xdist workers for every stage (default: gates.yaml `workers`)")


def _present(stage: str, g: gates.Gates) -> bool:
    return any(path.is_file() or path.is_dir() and any(path.glob("test_*.py")) for path in g.stage_paths(stage))


async def _gate(stages: list[str], profile: str, log: Path, timeout: float,
                workers: int | None) -> tuple[float, bool, str]:
    """Wall time of one `harness gate` run, whether it passed, and its last gate-table lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    run_id = f"{stacks.RUN_ID}-{profile}-{'-'.join(stages)}"
    started = time.monotonic()
    with await asyncio.to_thread(open, log, "wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "harness.cli", "gate", *stages, "--profile", profile,
            *(["--workers", str(workers)] if workers else []),
            stdout=out, stderr=asyncio.subprocess.STDOUT, cwd=paths.REPO_ROOT, env={**os.environ, "HARNESS_RUN_ID": run_id},
            start_new_session=True)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    seconds = time.monotonic() - started
    summary = paths.REPORTS_DIR / run_id / "gates.json"
    passed = await asyncio.to_thread(summary.exists) and bool(json.loads(summary.read_text())["passed"])
    text = await asyncio.to_thread(log.read_text, errors="replace")
    table = [ln for ln in text.splitlines() if re.match(r"^\s*(A|B|C|D)\d?\s", ln)]
    return seconds, passed, "; ".join(" ".join(ln.split()) for ln in table[-len(stages):])


async def run(a: argparse.Namespace) -> list[Figure]:
    g = gates.load(a.profile)
    figures = []
    for name in a.sets:
        wanted = [s for group in name.split() for s in GROUPS.get(group, [group])]
        stages = [s for s in wanted if _present(s, g)]
        missing = [s for s in wanted if s not in stages]
        note = f"stages {' '.join(stages)}" + (f"; not present yet: {' '.join(missing)}" if missing else "")
        print(f"  gate {name}: {note}", flush=True)
        base_s, base_ok, _ = await _gate(stages, a.baseline_profile, stacks.root(NAME) / f"{name}-{a.baseline_profile}.log",
                                         a.timeout, a.workers)
        print(f"    {a.baseline_profile}: {base_s:.0f}s passed={base_ok}", flush=True)
        full_s, full_ok, table = await _gate(stages, a.profile, stacks.root(NAME) / f"{name}-{a.profile}.log", a.timeout,
                                             a.workers)
        print(f"    {a.profile}: {full_s:.0f}s passed={full_ok} {table}", flush=True)
        target = TARGETS.get(name)
        # A run that stopped early is a lower bound: over the target is a miss, under it proves nothing.
        met = None if not target else full_s <= target if full_ok else (False if full_s > target else None)
        workers = a.workers or "/".join(str(g.workers(s)) for s in stages)
        baseline = (f"{a.baseline_profile} profile {base_s:.0f}s (passed={base_ok}); {a.profile} passed={full_ok}; {note}; "
                    f"workers {workers}")
        figures.append(Figure(f"gates.{name.replace(' ', '')}_wall", full_s, "s", baseline,
                              f"<= {target:.0f} s" if target else "", met))
    return figures


if __name__ == "__main__":
    from bench.cli import main

    main([NAME, *sys.argv[1:]])
