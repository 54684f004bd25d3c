"""The report: a run's allure-results plus its gate verdicts, as one Allure 3 index.html that opens offline.

allurerc.mjs holds the Allure settings; this module gives it the paths and the categories through env vars.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from harness.checkers.invariants import INVARIANT_BROKEN
from harness.report.records import head_commit
from harness.stack import paths
from runtime.protocol import ERROR_KINDS

CONFIG_FILE: Final[Path] = paths.REPO_ROOT / "allurerc.mjs"
# Trends across runs; HARNESS_HISTORY moves it, so self-tests do not pollute the real trend.
HISTORY_FILE: Final[Path] = Path(os.environ.get("HARNESS_HISTORY") or paths.REPORTS_DIR / "history.jsonl")
GENERATE_TIMEOUT_S: Final[float] = 180.0
GATES_SUITE: Final[str] = "Gates"
# The Awesome plugin always emits a Google Analytics tag; these must not survive in an offline report.
ANALYTICS_MARKS: Final[tuple[str, ...]] = ("googletagmanager", "google-analytics", "gtag")
_SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script>\s*", re.DOTALL | re.IGNORECASE)


# ---- environment ------------------------------------------------------------------------------

def _version(tool: Callable[[], Path], flag: str) -> str:
    """First line of `<tool> <flag>`; a tool that is missing or fails is "unavailable", never an error."""
    try:
        out = subprocess.run([str(tool()), flag], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unavailable"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unavailable"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unavailable"


def _allure_version() -> str:
    try:  # .bin/allure links to the package's cli.js, next to its package.json
        package = paths.allure_bin().resolve().parent / "package.json"
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unavailable"


def _memory_gib() -> str:
    try:
        return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f}"
    except (ValueError, OSError, AttributeError):
        return "unavailable"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def write_environment(results_dir: Path, profile: str) -> dict[str, str]:
    """environment.properties, which the report shows under Metadata; returns what it wrote."""
    env = {
        "codex": _version(paths.codex_bin, "--version"),
        "toxiproxy": _version(paths.toxiproxy_server, "-version"),
        "python": platform.python_version(),
        "codex_relay": _package_version("codex-relay"),
        "allure": _allure_version(),
        "git_commit": head_commit() or "unavailable",
        "profile": profile,
        "machine.nproc": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "machine.memory_gib": _memory_gib(),
        "machine.platform": platform.platform(),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "environment.properties").write_text("".join(f"{k}={_escape(v)}\n" for k, v in env.items()))
    return env


# ---- gate verdicts as results -----------------------------------------------------------------

def _gate_result(verdict: dict[str, Any], stop_ms: int) -> dict[str, Any]:
    stage, criteria = verdict["stage"], verdict["criteria"]
    start_ms = stop_ms - int(float(verdict.get("seconds", 0.0)) * 1000)
    status = "passed" if verdict["passed"] else "failed"
    failed = [c for c in criteria if not c["passed"]]
    # Criteria are judged at the end, so a step takes no time; the gate's own span is its stage's run time.
    steps = [{"name": c["name"], "status": "passed" if c["passed"] else "failed", "stage": "finished",
              "start": stop_ms, "stop": stop_ms, "parameters": [{"name": "detail", "value": c["detail"]}],
              **({} if c["passed"] else {"statusDetails": {"message": c["detail"]}})} for c in criteria]
    # The report shows the message's first line as the body's last item, so it reads as the conclusion.
    message = (f"Gate {stage} failed: {len(failed)} of {len(criteria)} criteria not met\n" +
               "\n".join(f"- {c['name']}: {c['detail']}" for c in failed)) if failed else \
        ("" if criteria else f"Gate {stage} failed: no criteria, no case of the stage ran")
    # The id depends on the stage alone (run counts are excluded parameters), so history trends per gate.
    test_id = f"gate-{stage}"
    return {
        "uuid": str(uuid.uuid4()), "name": f"Gate {stage}", "fullName": f"gates.{stage}", "testCaseId": test_id,
        "historyId": test_id,
        "status": status, "stage": "finished", "start": start_ms, "stop": stop_ms,
        **({"statusDetails": {"message": message}} if message else {}),
        "labels": [{"name": "parentSuite", "value": GATES_SUITE}, {"name": "suite", "value": GATES_SUITE},
                   {"name": "stage", "value": stage}],
        "parameters": [{"name": "runs", "value": str(verdict.get("runs", 0)), "excluded": True},
                       {"name": "seconds", "value": str(verdict.get("seconds", 0.0)), "excluded": True}],
        "steps": steps,
    }


def write_gate_results(results_dir: Path, verdicts: list[dict[str, Any]]) -> None:
    """One Allure result per gate verdict (Verdict.to_json()), a step per criterion."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stop_ms = int(time.time() * 1000)
    for verdict in verdicts:
        result = _gate_result(verdict, stop_ms)
        (results_dir / f"{result['uuid']}-result.json").write_text(json.dumps(result, indent=1))


# ---- generate ---------------------------------------------------------------------------------

def categories() -> list[dict[str, Any]]:
    """Allure 3 category rules, first match wins: gate verdicts, invariant breaks, then one per error kind."""
    broken = ["failed", "broken"]
    rules: list[dict[str, Any]] = [
        {"name": "Gate failed", "matchers": {"statuses": ["failed"], "labels": {"parentSuite": f"^{GATES_SUITE}$"}}},
        {"name": "Gate A invariant broken", "matchers": {"statuses": broken, "message": re.escape(INVARIANT_BROKEN)}},
    ]
    # `error_kind=<kind>` from logs and user lines, `'error_kind': '<kind>'` from a dict in an assertion.
    rules += [{"name": f"error_kind={kind}",
               "matchers": {"statuses": broken, "message": rf"error_kind(?:=|['\"]: ['\"]){kind}\b"}}
              for kind in ERROR_KINDS]
    return rules


def _strip_analytics(html: str) -> str:
    """Drop the gtag loader and its inline setup; every other script (the app, the data) stays."""
    def keep(m: re.Match[str]) -> str:
        attrs, body = m.group(1), m.group(2)
        return "" if "googletagmanager" in attrs or ("dataLayer" in body and "gtag(" in body) else m.group(0)
    return _SCRIPT.sub(keep, html)


def generate(results_dir: Path, out_dir: Path, name: str) -> Path:
    """Run `allure generate` with allurerc.mjs; returns the single index.html, with no analytics call left."""
    HISTORY_FILE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="allure-categories-") as tmp:
        rules = Path(tmp) / "categories.json"
        rules.write_text(json.dumps(categories()))
        env = {**os.environ, "ALLURE_REPORT_NAME": name, "ALLURE_RESULTS_DIR": str(results_dir.resolve()),
               "ALLURE_OUTPUT_DIR": str(out_dir.resolve()), "ALLURE_HISTORY_PATH": str(HISTORY_FILE),
               "ALLURE_CATEGORIES_FILE": str(rules), "NO_COLOR": "1"}
        cmd = [str(paths.allure_bin()), "generate", "--config", str(CONFIG_FILE)]
        try:
            proc = subprocess.run(cmd, cwd=paths.REPO_ROOT, env=env, capture_output=True, text=True,
                                  timeout=GENERATE_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"allure generate took over {GENERATE_TIMEOUT_S:.0f}s on {results_dir}: "
                               "is the results folder huge, or the machine swapping?") from exc
    index = out_dir / "index.html"
    if proc.returncode != 0 or not index.is_file():
        tail = "\n".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-20:])
        raise RuntimeError(f"allure generate failed (exit {proc.returncode}) for {results_dir}:\n{tail}")
    html = _strip_analytics(index.read_text(encoding="utf-8"))
    left = [mark for mark in ANALYTICS_MARKS if mark in html]
    if left:
        raise RuntimeError(f"{index} still mentions {', '.join(left)} after stripping the analytics tag: "
                           "the Awesome template changed; update harness/report/allure.py's _strip_analytics")
    index.write_text(html, encoding="utf-8")
    return index
