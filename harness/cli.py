"""`harness`: the command line of the harness. `harness gate` runs the staged gates A1 -> D in the
plan's fixed order, stops at the first that fails, prints the gate table and writes the report.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import gates, paths

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


def _run_stage(stage: str, g: gates.Gates, run_id: str, run_dir: Path) -> gates.Verdict:
    target = g.stage_path(stage)
    started = time.monotonic()
    if not target.exists():
        return gates.Verdict(stage, False, [gates.Criterion("the stage has scenarios", False,
                                                            f"{target.relative_to(paths.REPO_ROOT)} does not exist")])
    argv = [sys.executable, "-m", "pytest", str(target), f"--profile={g.profile}",
            f"--alluredir={run_dir / 'allure-results'}", "-q", "-p", "no:cacheprovider"]
    print(f"\n== gate {stage}: {' '.join(argv[2:])}", flush=True)
    env = {**os.environ, "HARNESS_RUN_ID": run_id}
    code = subprocess.call(argv, cwd=paths.REPO_ROOT, env=env)
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


def gate(args: argparse.Namespace) -> int:
    try:
        g = gates.load(args.profile)
    except gates.GatesError as exc:
        print(f"harness gate: {exc}", file=sys.stderr)
        return 2
    run_id = os.environ.get("HARNESS_RUN_ID") or time.strftime("gate-%Y%m%d-%H%M%S")
    run_dir = paths.REPORTS_DIR / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    verdicts: list[gates.Verdict] = []
    for stage in _stages(args.stages):
        verdicts.append(_run_stage(stage, g, run_id, run_dir))
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


def _report(run_dir: Path, summary: dict[str, object]) -> Path | None:
    from harness import report  # the report needs node tools; a gate run must not depend on them to finish

    results = run_dir / "allure-results"
    results.mkdir(exist_ok=True)
    try:
        report.write_environment(results, str(summary["profile"]))
        report.write_gate_results(results, list(summary["gates"]))  # type: ignore[arg-type]
        return report.generate(results, run_dir / "allure-report", f"Codex Relay gates {summary['run']}")
    except (RuntimeError, OSError) as exc:
        print(f"harness: the Allure report was not generated: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="harness", description="Codex Relay test harness")
    sub = parser.add_subparsers(dest="command", required=True)
    p_gate = sub.add_parser("gate", help="run the staged gates A1 -> D in order, stop at the first failure")
    p_gate.add_argument("stages", nargs="*", default=["all"], help="A, B, C, D, all, or single stages like A2")
    p_gate.add_argument("--profile", default="quick", choices=gates.PROFILES,
                        help="quick (default), ci, or full (the user's numbers and durations)")
    p_gate.set_defaults(func=gate)
    args = parser.parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
