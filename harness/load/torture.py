"""The torture soak (R-06): seeded soaks with faults packed densely, every kind, node SIGTERM and bot SIGKILL among
them, while a share of the turns goes through the real bot. Each run is a soak of its own (harness/load/soak.py) on
a fresh stack, judged by gates.yaml's torture thresholds; the totals across runs are what R-06 counts.

A run's folder holds the soak's files plus `torture.json` (its figures); the command's folder holds `totals.json`
and `totals.md`, rewritten after every run, so a sequence stopped half-way still says what it reached.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness.checkers.checkers import percentile
from harness.gates import gates
from harness.load import soak
from harness.load.soak import SoakRun, SoakSettings
from harness.stack.stack import Stack

SECTION = "torture"


# What a fault's window notes when the stack did not take it as it should: a node that did not stop on SIGTERM, or
# left its codex child behind, a half-open link nobody noticed. Any of them fails the run.
DEFECTS = ("not_exited", "left_behind", "undetected")


def figures(g: gates.Gates, run: SoakRun) -> dict[str, Any]:
    """One run's figures, as torture.json keeps them and the totals add them up."""
    s, eo = run.summary, run.summary.exactly_once
    rtos = [math.inf if r.rto_s is None else r.rto_s for r in s.recoveries]
    criteria = gates.judge(g, SECTION, gates.measure(g, SECTION, s.metric))
    played = {f.fault: 0 for f in run.faults}
    for f in run.faults:
        played[f.fault] += 1
    out: dict[str, Any] = {
        "seed": run.settings.seed, "folder": run.out_dir.name, "duration_s": run.settings.duration_s,
        "stopped_early": run.stopped_early, "faults": len(run.faults), "faults_by_kind": dict(sorted(played.items())),
        "planned": len(run.plan), "skipped": run.skipped,
        "kinds_missing": sorted(set(run.settings.kinds) - set(played)),
        "fault_defects": [{"fault": f.fault, "target": f.target, **{k: f.params[k] for k in DEFECTS if k in f.params}}
                          for f in run.faults if set(DEFECTS) & f.params.keys()],
        "ops": s.all.ops, "ok": s.all.ok, "fail": s.all.fail, "unknown": s.all.unknown,
        "rate_all": s.all.rate, "steady_ops": s.steady.ops, "rate": s.steady.rate,
        "chat_ops": sum(1 for o in run.ops if o.op == "chat"),
        "rto_p50_s": percentile([r for r in rtos if not math.isinf(r)], 50), "rto_p95_s": percentile(rtos, 95),
        "rto_max_s": max(rtos, default=None), "never_recovered": sum(1 for r in rtos if math.isinf(r)),
        "rto_max_by_kind_s": _rto_by_kind(run),
        "tasks": eo.tasks if eo else None, "acknowledged": eo.acknowledged if eo else None,
        "duplicates": eo.duplicates + eo.unrecorded if eo else None, "lost": eo.lost if eo else None,
        "dropped": eo.dropped if eo else None, "inconsistent": eo.inconsistent if eo else None,
        "unknown_resolved": eo.unknown if eo else None, "examples": eo.examples if eo else [],
        "unanswered": eo.unanswered if eo else None, "stale_placeholders": eo.stale_placeholders if eo else None,
        "still_open": run.still_open,
        "criteria": [dataclasses.asdict(c) for c in criteria],
    }
    out["passed"] = (all(c.passed for c in criteria) and not run.stopped_early and not run.still_open
                     and not out["fault_defects"])
    return out


def _rto_by_kind(run: SoakRun) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for r in run.summary.recoveries:
        worst = out.get(r.fault, 0.0)
        out[r.fault] = None if r.rto_s is None or worst is None else max(worst, r.rto_s)
    return dict(sorted(out.items()))


def totals(runs: list[dict[str, Any]], kinds: list[str], min_faults: int) -> dict[str, Any]:
    """The sequence's totals, and its verdict: every run passed, every kind fired, min_faults reached."""
    by_kind: Counter[str] = Counter()
    for r in runs:
        by_kind.update(r["faults_by_kind"])
    count = sum(r["faults"] for r in runs)
    missing = sorted(set(kinds) - set(by_kind))
    rtos = [r["rto_max_s"] for r in runs if r["rto_max_s"] is not None]
    out: dict[str, Any] = {
        "runs": len(runs), "seeds": [r["seed"] for r in runs], "faults": count,
        "faults_by_kind": {k: by_kind.get(k, 0) for k in kinds}, "kinds_missing": missing,
        "ops": sum(r["ops"] for r in runs), "ok": sum(r["ok"] for r in runs),
        "chat_ops": sum(r["chat_ops"] for r in runs), "tasks": sum(r["tasks"] or 0 for r in runs),
        **{k: sum(r[k] or 0 for r in runs) for k in ("duplicates", "lost", "dropped", "inconsistent",
                                                       "never_recovered", "unanswered", "stale_placeholders")},
        "rto_p95_s_worst_run": max((r["rto_p95_s"] for r in runs if r["rto_p95_s"] is not None), default=None),
        "rto_max_s": max(rtos, default=None),
        "rate_worst_run": min((r["rate"] for r in runs if r["rate"] is not None), default=None),
        "rate_all": (sum(r["ok"] for r in runs) / sum(r["ops"] for r in runs)) if any(r["ops"] for r in runs) else None,
        "runs_failed": [r["seed"] for r in runs if not r["passed"]],
        "min_faults": min_faults,
    }
    out["passed"] = bool(runs) and not out["runs_failed"] and not missing and count >= min_faults
    return out


def markdown(t: dict[str, Any], runs: list[dict[str, Any]], command: str) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2%}"

    def sec(v: float | None) -> str:
        return "n/a" if v is None else ("never" if math.isinf(v) else f"{v:.1f} s")

    lines = [f"# Torture totals: {'PASS' if t['passed'] else 'FAIL'}", "", f"`{command}`", "",
             f"{t['runs']} runs (seeds {', '.join(map(str, t['seeds']))}), **{t['faults']} faults** "
             f"(at least {t['min_faults']}), {t['ops']} ops ({t['chat_ops']} through the bot), {t['tasks']} turns checked.",
             "", f"duplicates {t['duplicates']}, lost {t['lost']}, dropped {t['dropped']}, "
             f"inconsistent {t['inconsistent']}, never recovered {t['never_recovered']}; through the bot "
             f"{t['unanswered']} messages never answered, {t['stale_placeholders']} placeholders left beside their "
             f"answer; RTO p95 (worst run) "
             f"{sec(t['rto_p95_s_worst_run'])}, max {sec(t['rto_max_s'])}; success outside faults (worst run) "
             f"{pct(t['rate_worst_run'])}, overall {pct(t['rate_all'])}.", "",
             "| kind | faults |", "|---|---|"]
    lines += [f"| {k} | {n} |" for k, n in t["faults_by_kind"].items()]
    lines += ["", "| seed | faults | ops | success (steady / all) | RTO p95 / max | dup | lost | dropped | verdict |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['faults']} | {r['ops']} | {pct(r['rate'])} / {pct(r['rate_all'])} | "
              f"{sec(r['rto_p95_s'])} / {sec(r['rto_max_s'])} | {r['duplicates']} | {r['lost']} | {r['dropped']} | "
              f"{'PASS' if r['passed'] else 'FAIL'} |" for r in runs]
    if t["kinds_missing"]:
        lines += ["", f"kinds never played: {', '.join(t['kinds_missing'])}"]
    for r in runs:
        lines += [f"- seed {r['seed']}: {c['name']}: {c['detail']}" for c in r["criteria"] if not c["passed"]]
        lines += [f"- seed {r['seed']}: {e}" for e in r["examples"]]
        lines += [f"- seed {r['seed']}: {d}" for d in r["fault_defects"]]
    return "\n".join(lines) + "\n"


async def main(g: gates.Gates, settings: SoakSettings, runs: int, run_dir: Path, command: str) -> int:
    """`runs` seeded torture runs in a row (seed, seed+1, ...), each on a fresh stack; Ctrl-C ends the current run
    (judged as stopped early) and the sequence."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        print("\n[torture] stopping: judging the current run, then the totals (Ctrl-C again to abort)", flush=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted)
    done: list[dict[str, Any]] = []
    min_faults = int(g.setting("gates.D.torture.min_faults"))
    try:
        for i in range(runs):
            if stop.is_set():
                break
            seed = settings.seed + i
            out = run_dir / f"seed-{seed}"
            print(f"\n[torture] run {i + 1}/{runs}: seed {seed}, {settings.duration_s / 60:.1f} min, "
                  f"replay: harness torture --runs 1 --seed {seed}", flush=True)
            stack = Stack(out / "stack")
            started = time.monotonic()
            try:
                await stack.start()
                result = await soak.run(stack, dataclasses.replace(settings, seed=seed), out, stop,
                                        lambda line: print(line, flush=True))
            finally:
                await stack.close()
            fig = figures(g, result)
            fig["seconds"] = round(time.monotonic() - started, 1)
            (out / "torture.json").write_text(json.dumps(fig, indent=1, default=str))
            print(result.report(), flush=True)
            done.append(fig)
            t = totals(done, settings.kinds, min_faults)
            (run_dir / "totals.json").write_text(json.dumps(t, indent=1, default=str))
            (run_dir / "totals.md").write_text(markdown(t, done, command))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if not done:
        print("[torture] no run finished")
        return 1
    print("\n" + markdown(totals(done, settings.kinds, min_faults), done, command))
    print(f"totals: {run_dir / 'totals.md'}\n        {run_dir / 'totals.json'}")
    return 0 if totals(done, settings.kinds, min_faults)["passed"] else 1
