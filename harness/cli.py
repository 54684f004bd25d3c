"""`harness`: the command line of the harness. `harness gate` runs the staged gates A1 -> D in the
plan's fixed order, stops at the first that fails, prints the gate table and writes the report.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.gates import gates
from harness.stack import paths

GROUPS = {"A": ["A1", "A2", "A3"], "B": ["B1", "B2"], "C": ["C"], "D": ["D"]}


def _stages(selected: list[str]) -> list[str]:
    """Stage names in the plan's order, whatever order they were given in."""
    wanted: set[str] = set()
    for name in selected:
        if name == "all":
            wanted.update(gates.STAGES)
        elif name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in gates.STAGES:
            wanted.add(name)
        else:
            raise SystemExit(f"harness gate: unknown stage {name!r}: "
                             f"use A, B, C, D, all or one of {', '.join(gates.STAGES)}")
    return [s for s in gates.STAGES if s in wanted]


def _run_stage(stage: str, g: gates.Gates, run_id: str, run_dir: Path, workers: int) -> gates.Verdict:
    targets = g.stage_paths(stage)
    started = time.monotonic()
    if missing := [str(t.relative_to(paths.REPO_ROOT)) for t in targets if not t.exists()]:
        return gates.Verdict(stage, False, [gates.Criterion("the stage has scenarios", False,
                                                            f"{', '.join(missing)} does not exist")])
    argv = [sys.executable, "-m", "pytest", *map(str, targets), f"--profile={g.profile}",
            f"--alluredir={run_dir / 'allure-results'}", "-q", "-p", "no:cacheprovider"]
    if workers > 1:  # pytest-xdist: a stack per worker; the controller still judges the whole gate
        # worksteal: a case's runs sit next to each other, so plain `load` can hand one worker all the
        # runs of the slowest case; an idle worker steals instead.
        argv += ["-n", str(workers), "--dist", "worksteal"]
    print(f"\n== gate {stage}: {' '.join(argv[2:])}", flush=True)
    env = {**os.environ, "HARNESS_RUN_ID": run_id}
    # Ctrl-C reaches pytest too, which winds down (a soak still judges what ran): wait for its verdict.
    # A handler, not SIG_IGN: an ignored signal would stay ignored in the child across exec.
    previous = signal.signal(signal.SIGINT, lambda *_: None)
    try:
        code = subprocess.call(argv, cwd=paths.REPO_ROOT, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    verdict_file = run_dir / f"gate-{stage}.json"
    if not verdict_file.exists():
        return gates.Verdict(stage, False, [gates.Criterion("pytest ran the stage", False, f"pytest exited {code}")],
                             seconds=round(time.monotonic() - started, 1))
    data = json.loads(verdict_file.read_text())
    verdict = gates.Verdict(stage, data["passed"], [gates.Criterion(**c) for c in data["criteria"]], data["runs"],
                            round(time.monotonic() - started, 1))
    if code not in (0, 1) and verdict.passed:
        verdict.passed = False
        verdict.criteria.append(gates.Criterion("pytest exited cleanly", False, f"pytest exited {code}"))
    return verdict


def _run_dir(kind: str) -> Path:
    """reports/<run>: HARNESS_RUN_ID names it, so a caller can find what a run wrote."""
    run_dir = paths.REPORTS_DIR / (os.environ.get("HARNESS_RUN_ID") or time.strftime(f"{kind}-%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def gate(args: argparse.Namespace) -> int:
    g: gates.Gates = args.gates
    stages = _stages(args.stages)
    run_dir = _run_dir("gate")
    run_id = run_dir.name
    verdicts: list[gates.Verdict] = []
    for stage in stages:
        verdicts.append(_run_stage(stage, g, run_id, run_dir, args.workers or g.workers(stage)))
        if not verdicts[-1].passed:
            print(f"\ngate {stage} FAILED: later stages do not run (the plan's order is fixed)", flush=True)
            break
    passed = bool(verdicts) and all(v.passed for v in verdicts)
    summary = {"run": run_id, "profile": g.profile, "passed": passed, "gates": [v.to_json() for v in verdicts]}
    (run_dir / "gates.json").write_text(json.dumps(summary, indent=2))
    report_path = _report(run_dir, summary)
    print(f"\ngates (profile {g.profile}):\n{gates.table(verdicts)}")
    print(f"\ngates.json: {run_dir / 'gates.json'}\nledger:     {run_dir / 'ledger.md'}")
    if report_path is not None:
        print(f"report:     {report_path}")
    return 0 if passed else 1


def _report(run_dir: Path, summary: dict[str, Any]) -> Path | None:
    from harness.report import allure as report  # the report needs node tools; a gate run must not depend on them to finish

    results = run_dir / "allure-results"
    results.mkdir(exist_ok=True)
    try:
        report.write_environment(results, str(summary["profile"]))
        report.write_gate_results(results, list(summary["gates"]))
        return report.generate(results, run_dir / "allure-report", f"Codex Relay gates {summary['run']}")
    except (RuntimeError, OSError) as exc:
        print(f"harness: the Allure report was not generated: {exc}", file=sys.stderr)
        return None


def _kinds(text: str) -> list[str]:
    from harness.faults.kinds import KINDS

    kinds = [k for k in text.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        raise argparse.ArgumentTypeError(f"unknown fault kinds in {text!r}: use a comma-separated list of "
                                         f"{', '.join(KINDS)}")
    return kinds


def soak(args: argparse.Namespace) -> int:
    """A soak outside pytest: progress in the terminal; Ctrl-C stops it and still judges what ran."""
    from harness.load import soak as soak_mod  # the soak pulls in the stack and the plotting stack

    g: gates.Gates = args.gates
    settings = soak_mod.SoakSettings.from_gates(g)
    changes = {k: v for k, v in (("duration_s", args.duration), ("seed", args.seed),
                                 ("fault_interval_s", args.fault_interval), ("kinds", args.kinds)) if v is not None}
    if args.no_faults:
        changes["faults"] = False
    settings = dataclasses.replace(settings, **changes)
    run_dir = _run_dir("soak")
    return asyncio.run(soak_mod.main(g, settings, run_dir))


def torture(args: argparse.Namespace) -> int:
    """Seeded torture runs in a row (R-06); each run replays with `--runs 1 --seed <its seed>` and the same settings."""
    from harness.load import soak as soak_mod
    from harness.load import torture as torture_mod

    g: gates.Gates = args.gates
    settings = soak_mod.SoakSettings.torture(g)
    changes = {k: v for k, v in (("duration_s", args.duration), ("seed", args.seed),
                                 ("fault_interval_s", args.fault_interval), ("kinds", args.kinds)) if v is not None}
    settings = dataclasses.replace(settings, **changes)
    runs = args.runs or int(g.setting("gates.D.torture.runs"))
    # The whole command, defaults spelled out: what reruns this sequence, whatever gates.yaml says by then.
    command = (f"harness torture --profile {g.profile} --runs {runs} --seed {settings.seed} "
               f"--duration {settings.duration_s:g} --fault-interval {settings.fault_interval_s:g} "
               f"--kinds {','.join(settings.kinds)}")
    return asyncio.run(torture_mod.main(g, settings, runs, _run_dir("torture"), command))


def burst(args: argparse.Namespace) -> int:
    from harness.load import burst as burst_mod  # Locust itself only ever runs in its own subprocesses

    g: gates.Gates = args.gates
    run_dir = _run_dir("burst")
    settings = burst_mod.BurstSettings.from_gates(g, users=args.users, duration_s=args.duration, workers=args.workers)
    if args.web:
        return asyncio.run(burst_mod.web(g, settings, run_dir, args.port, args.max_time))
    return asyncio.run(burst_mod.main(g, settings, run_dir))


def check(args: argparse.Namespace) -> int:
    """Judge a recorded soak again, offline: the checkers are pure functions of its files."""
    from harness.load import soak as soak_mod

    g: gates.Gates = args.gates
    return soak_mod.recheck(g, Path(args.run_dir))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="harness", description="Codex Relay test harness")
    sub = parser.add_subparsers(dest="command", required=True)
    p_gate = sub.add_parser("gate", help="run the staged gates A1 -> D in order, stop at the first failure")
    p_gate.add_argument("stages", nargs="*", default=["all"], help="A, B, C, D, all, or single stages like A2")
    p_gate.add_argument("--profile", default="quick", choices=gates.PROFILES,
                        help="quick (default), ci, or full (the user's numbers and durations)")
    p_gate.add_argument("--workers", type=int, choices=range(1, 17), metavar="N",
                        help="pytest-xdist workers for every stage, each with its own stacks "
                             "(default: gates.yaml `workers`; 1 runs each stage in one process)")
    p_gate.set_defaults(func=gate)

    p_soak = sub.add_parser("soak", help="boot a stack and soak it under load and seeded faults; Ctrl-C stops early")
    p_soak.add_argument("--profile", default="full", choices=gates.PROFILES,
                        help="whose durations, rates and thresholds (default full: the user's 2-4 h)")
    p_soak.add_argument("--duration", type=float, help="seconds, instead of the profile's gates.D.soak.duration_s")
    p_soak.add_argument("--seed", type=int, help="another fault schedule; the same seed replays the same one")
    p_soak.add_argument("--fault-interval", type=float, help="mean seconds between faults")
    p_soak.add_argument("--no-faults", action="store_true", help="load only: a baseline for the resource trends")
    p_soak.add_argument("--kinds", type=_kinds, metavar="K1,K2",
                        help="fault kinds to play, instead of gates.D.faults.kinds (e.g. hostile_peer,half_open)")
    p_soak.set_defaults(func=soak)

    p_tort = sub.add_parser("torture", help="seeded soaks with dense faults of every kind, node SIGTERM and bot "
                                            "SIGKILL among them (R-06); totals in reports/torture-<stamp>/")
    p_tort.add_argument("--profile", default="full", choices=gates.PROFILES,
                        help="whose gates.D.torture settings (default full: runs of 15 min)")
    p_tort.add_argument("--runs", type=int, help="seeded runs in a row, instead of gates.D.torture.runs")
    p_tort.add_argument("--seed", type=int, help="the first run's seed (the next runs take seed+1, ...); "
                                                 "`--runs 1 --seed N` replays run N")
    p_tort.add_argument("--duration", type=float, help="seconds per run, instead of gates.D.torture.duration_s")
    p_tort.add_argument("--fault-interval", type=float, help="mean seconds between a fault's recovery and the next")
    p_tort.add_argument("--kinds", type=_kinds, metavar="K1,K2", help="fault kinds, instead of gates.D.torture.kinds")
    p_tort.set_defaults(func=torture)

    p_burst = sub.add_parser("burst", help="boot a stack and hit it with a Locust burst (headless, or --web)")
    p_burst.add_argument("--profile", default="quick", choices=gates.PROFILES)
    p_burst.add_argument("--users", type=int, help="Locust users, instead of gates.D.burst.users")
    p_burst.add_argument("--duration", type=float, help="seconds, instead of gates.D.burst.duration_s")
    p_burst.add_argument("--workers", type=int, default=0,
                         help="distributed: a master and this many local workers (default 0: one process)")
    p_burst.add_argument("--web", action="store_true", help="open Locust's web UI on 127.0.0.1 instead of running")
    p_burst.add_argument("--port", type=int, default=8089, help="the web UI's port (with --web)")
    p_burst.add_argument("--max-time", type=float, default=3600,
                         help="with --web: tear the stack down after this many seconds (default 3600)")
    p_burst.set_defaults(func=burst)

    p_check = sub.add_parser("check", help="run the checkers again on a recorded soak's folder")
    p_check.add_argument("run_dir", help="a soak's folder: history.jsonl, resources.jsonl, evidence.json")
    p_check.add_argument("--profile", default="full", choices=gates.PROFILES)
    p_check.set_defaults(func=check)
    args = parser.parse_args(argv)
    try:
        args.gates = gates.load(args.profile)
    except gates.GatesError as exc:
        print(f"harness {args.command}: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
