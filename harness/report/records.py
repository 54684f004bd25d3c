"""The seed's record template, filled for every case run, and the ledger that sums them up.

case_id, preconditions, steps, expected, actual, result, logs (by trace_id/node_id/task_id),
root_cause, fix_commit, retest_result: one JSON line per run in cases.jsonl, one row per case in ledger.md.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.gates.cases import Case
from harness.stack.paths import REPO_ROOT
from harness.stack.procs import Proc

MAX_LOG_LINES = 200  # per process and case: enough to locate, small enough to read


@dataclass
class CaseRecord:
    case_id: str
    run: int
    stage: str
    kind: str
    title: str
    preconditions: str
    steps: list[str]
    expected: str
    actual: str
    result: str  # PASS or FAIL
    logs: dict[str, list[str]] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    root_cause: str | None = None
    fix_commit: str | None = None
    retest_result: str | None = None
    error_kind: str | None = None
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)


def head_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None


def located_logs(procs: list[Proc], ids: list[str], start: float, end: float) -> dict[str, list[str]]:
    """Log lines of each process that mention one of the case's ids, within the case's time window."""
    found: dict[str, list[str]] = {}
    wanted = [i for i in ids if len(i) >= 4]
    for proc in procs:
        lines = [ln for ln in proc.log_lines() if any(i in ln for i in wanted) and _within(ln, start, end)]
        if lines:
            found[proc.name] = lines[-MAX_LOG_LINES:]
    return found


def troubles(procs: list[Proc], start: float, end: float, per_proc: int = 8) -> str:
    """Which processes are up, then the last warning and error lines of each within a window. A failed
    case prints them: CI keeps the terminal, not the run's folder."""
    out = [", ".join(f"{p.name} {'up' if p.alive else f'exited {p.returncode}'}" for p in procs)]
    for proc in procs:
        lines = [ln for ln in proc.log_lines()
                 if ln.startswith("ts=") and (" level=warning " in ln or " level=error " in ln)
                 and _within(ln, start, end)]
        out += [f"{proc.name}: {ln}" for ln in lines[-per_proc:]]
    return "\n".join(out)


def _within(line: str, start: float, end: float) -> bool:
    # Lines without our ts= prefix (codex's own, the mock's) are kept: the id match already located them.
    if not line.startswith("ts="):
        return True
    try:
        t = datetime.fromisoformat(line[3:].split(" ", 1)[0]).timestamp()
    except ValueError:
        return True
    return start - 1 <= t <= end + 1


def summarize(trail: list[dict[str, Any]]) -> list[str]:
    steps = []
    for entry in trail:
        if entry.get("note"):
            continue
        status = entry.get("status", "no answer")
        shown = {k: v for k, v in entry["body"].items() if k not in ("token",)}
        steps.append(f"{entry['call']} {json.dumps(shown, default=str)[:160]} -> {status}")
    return steps


def ledger(records: list[CaseRecord], cases: dict[str, Case]) -> str:
    """A status table in the style of the seed's section 7: one row per case id."""
    by_case: dict[str, list[CaseRecord]] = {}
    for r in records:
        by_case.setdefault(r.case_id, []).append(r)
    lines = ["| case_id | stage | kind | case | runs | result | root cause |", "|---|---|---|---|---|---|---|"]
    for cid, case in cases.items():
        runs = by_case.get(cid, [])
        if not runs:
            lines.append(f"| {cid} | {case.stage} | {case.kind} | {case.case} | 0 | NOT RUN | |")
            continue
        passed = sum(1 for r in runs if r.result == "PASS")
        result = "PASS" if passed == len(runs) else "FAIL"
        cause = next((r.root_cause for r in runs if r.root_cause), "") or ""
        lines.append(f"| {cid} | {case.stage} | {case.kind} | {case.case} | {passed}/{len(runs)} | {result} | "
                     f"{cause[:120].replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def append(path: Path, record: CaseRecord) -> None:
    with open(path, "a") as fh:
        fh.write(record.to_json() + "\n")


def load(path: Path) -> list[CaseRecord]:
    if not path.exists():
        return []
    return [CaseRecord(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
