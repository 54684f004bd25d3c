"""The pytest side of the gates: repeat each case as gates.yaml says, check invariants after every
run, fill each run's record, and evaluate the stage's gate when the session ends.

So `pytest scenarios/A` evaluates gate A, and fails if it fails.

Under pytest-xdist (`-n N`) each worker runs cases on stacks of its own and sends every run's record
with its teardown report; the controller alone writes cases.jsonl and judges the gates, from the
records of every worker, so each run counts exactly once.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import allure
import pytest

from harness.checkers import invariants as checks
from harness.gates import gates
from harness.gates.cases import Case, catalogue
from harness.report import records
from harness.stack import paths
from harness.stack.stack import Stack

GATES_KEY = pytest.StashKey[gates.Gates]()
STATE_KEY = pytest.StashKey[dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--profile", default=os.environ.get("HARNESS_PROFILE", "full"),
                     choices=gates.PROFILES, help="gate profile from gates.yaml (default: full, the user's numbers)")


def pytest_configure(config: pytest.Config) -> None:
    try:
        config.stash[GATES_KEY] = gates.load(config.getoption("profile"))
    except gates.GatesError as exc:
        raise pytest.UsageError(str(exc)) from None
    if is_worker(config):  # the controller named the run's folder; a worker's own clock may disagree
        run_dir = Path(config.workerinput["harness_run_dir"])  # type: ignore[attr-defined]
    else:
        run_dir = paths.REPORTS_DIR / (os.environ.get("HARNESS_RUN_ID") or time.strftime("run-%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    config.stash[STATE_KEY] = {"run_dir": run_dir, "runs": {}, "started": {}, "stage_time": {}}
    if not is_worker(config):
        config.pluginmanager.register(_Tally(config.stash[STATE_KEY]), "harness-tally")


def is_worker(config: pytest.Config) -> bool:
    """An xdist worker: it runs cases, the controller records and judges them."""
    return hasattr(config, "workerinput")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, on the controller: every worker writes into this run's folder."""
    node.workerinput["harness_run_dir"] = str(node.config.stash[STATE_KEY]["run_dir"])


def case_of(item: pytest.Item) -> Case:
    marker = item.get_closest_marker("case")
    if marker is None:
        raise pytest.UsageError(f"{item.nodeid} has no @pytest.mark.case(<id>): every scenario names its case id")
    if marker.args[0] not in catalogue():
        raise pytest.UsageError(f"{item.nodeid}: case id {marker.args[0]!r} is not in scenarios/catalogue.yaml")
    return catalogue()[marker.args[0]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("case")
    if marker is None or marker.args[0] not in catalogue():
        return
    case = catalogue()[marker.args[0]]
    if case.gate == "A":
        reps = metafunc.config.stash[GATES_KEY].required_passes(case.kind)
        metafunc.fixturenames.append("gate_run")
        metafunc.parametrize("gate_run", range(1, reps + 1), ids=[f"run{i}" for i in range(1, reps + 1)])


@pytest.fixture
def gate_run(request: pytest.FixtureRequest) -> int:
    return int(getattr(request, "param", 1))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _is_scenario(item):
            case_of(item)


def _is_scenario(item: pytest.Item) -> bool:
    """Scenarios are the user's cases; tests/ holds the harness's own self-tests, which have no case id."""
    return "scenarios" in item.path.parts


@pytest.fixture(autouse=True)
async def _case_invariants(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """After every run of a case that used the stack: no crash, no deadlock, no state pollution."""
    yield
    if "stack" not in request.fixturenames or not _is_scenario(request.node):
        return
    stack: Stack = request.getfixturevalue("stack")
    g = request.config.stash[GATES_KEY]
    problems = checks.crashed(stack)
    if not problems:
        problems = await checks.deadlocked(stack, g.setting("checks.health_timeout_s"),
                                           g.setting("checks.roundtrip_timeout_s"))
    if not problems:
        problems = await checks.polluted(stack, g.setting("checks.settle_timeout_s"))
    if problems:
        case, run = case_of(request.node), getattr(request.node, "callspec", None)
        label = f"{case.id} {run.id if run else 'run1'}"
        pytest.fail(f"{label} {checks.INVARIANT_BROKEN}: " + "; ".join(problems), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """The case's Allure entry. Set during the call: allure-pytest overwrites titles set by setup fixtures.

    After the body: the control calls and faults it made become steps, and its ids locate its log lines.
    """
    if not _is_scenario(item):
        yield
        return
    case, started = case_of(item), time.time()
    allure.dynamic.title(f"{case.id}: {case.case}")
    allure.dynamic.description(f"**Preconditions:** {_preconditions(item)}\n\n"
                               f"**Stage** {case.stage}, kind {case.kind}\n\n**Expected:** {case.expected}")
    for name, value in (("ALLURE_ID", case.id), ("case_id", case.id), ("parentSuite", case.gate),
                        ("suite", case.stage), ("tag", case.kind)):
        allure.dynamic.label(name, value)
    first = len(_trail(item))
    yield
    trail, stack = _trail(item)[first:], _stack(item)
    for step in records.summarize(trail):
        with allure.step(step):
            pass
    for w in stack.faults.windows if stack else []:
        if w.start >= started:
            with allure.step(f"fault {w.fault} on {w.target} for {(w.end or time.time()) - w.start:.2f}s {w.params or ''}"):
                pass
    ids = sorted({i for e in trail for i in e.get("ids", [])})
    for name, lines in records.located_logs(list(stack.procs.values()) if stack else [], ids, started,
                                            time.time()).items():
        allure.attach("\n".join(lines), name=f"log {name}", attachment_type=allure.attachment_type.TEXT)


def _preconditions(item: pytest.Item) -> str:
    """A scenario module's docstring says what it boots: that is the case's precondition."""
    doc = getattr(getattr(item, "module", None), "__doc__", None) or ""
    return doc.strip().split("\n", 1)[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    if not _is_scenario(item):
        return
    report: pytest.TestReport = outcome.get_result()
    state = item.config.stash[STATE_KEY]
    if report.when == "setup":
        state["started"][item.nodeid] = {"start": time.time(), "failed": None, "trail_from": len(_trail(item))}
    info = state["started"][item.nodeid]
    if report.failed and info["failed"] is None:
        info["failed"] = _first_line(report)
        if (stack := _stack(item)) is not None:
            seen = records.troubles(list(stack.procs.values()), info["start"], time.time())
            report.sections.append(("stack processes, and their warnings and errors during the case", seen))
    if report.when == "teardown":
        # On the report, not in this process's state: under xdist it travels to the controller with it.
        report.harness_record = dataclasses.asdict(_record(item, state["started"].pop(item.nodeid)))  # type: ignore[attr-defined]


def _stack(item: pytest.Item) -> Stack | None:
    stack = getattr(item, "funcargs", {}).get("stack")
    return stack if isinstance(stack, Stack) else None


def _trail(item: pytest.Item) -> list[dict[str, Any]]:
    stack = _stack(item)
    return stack.trail if stack is not None else []


def _first_line(report: pytest.TestReport) -> str:
    text = report.longreprtext.strip().splitlines()
    errors = [ln for ln in text if ln.startswith("E ")] or text[-1:] or ["failed"]
    return errors[0].removeprefix("E ").strip()[:400]


def _record(item: pytest.Item, info: dict[str, Any]) -> records.CaseRecord:
    """Fill the seed's record for this run."""
    case, end, stack = case_of(item), time.time(), _stack(item)
    run = int(item.callspec.params.get("gate_run", 1)) if hasattr(item, "callspec") else 1
    trail = _trail(item)[info["trail_from"]:]
    ids = sorted({i for e in trail for i in e.get("ids", [])})
    passed = info["failed"] is None
    return records.CaseRecord(
        case_id=case.id, run=run, stage=case.stage, kind=case.kind, title=case.case,
        preconditions=_preconditions(item), steps=records.summarize(trail),
        expected=case.expected, actual="as expected" if passed else info["failed"],
        result="PASS" if passed else "FAIL",
        logs=records.located_logs(list(stack.procs.values()) if stack else [], ids, info["start"], end), ids=ids,
        root_cause=None if passed else info["failed"], fix_commit=None if passed else records.head_commit(),
        seconds=round(end - info["start"], 3))


class _Tally:
    """Counts each run's record toward its case's gate, in the one process that judges (under xdist, the
    controller: the record arrives with the worker's teardown report)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "harness_record", None)
        if data is None or report.when != "teardown":
            return
        rec = records.CaseRecord(**data)
        records.append(self.state["run_dir"] / "cases.jsonl", rec)
        runs = self.state["runs"].setdefault(rec.stage, {}).setdefault(rec.case_id, [])
        runs.append((rec.run, rec.result == "PASS", rec.root_cause))
        self.state["stage_time"][rec.stage] = self.state["stage_time"].get(rec.stage, 0.0) + rec.seconds


def _case_runs(case_id: str, runs: list[tuple[int, bool, str | None]]) -> gates.CaseRuns:
    """A case's runs in run order: workers finish them in any order, and the gate counts passes in a row."""
    out = gates.CaseRuns(catalogue()[case_id])
    for run, passed, failure in sorted(runs, key=lambda r: r[0]):
        out.outcomes.append(passed)
        if not passed:
            out.failures.append(f"run{run}: {failure}")
    return out


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if is_worker(session.config):
        return  # a worker saw only its share of the runs: the controller judges
    state = session.config.stash[STATE_KEY]
    g = session.config.stash[GATES_KEY]
    complete = not (session.config.option.keyword or session.config.option.markexpr or
                    any("::" in a for a in session.config.args))
    verdicts = [gates.evaluate(stage, {cid: _case_runs(cid, rs) for cid, rs in runs.items()}, g, complete,
                               state["stage_time"].get(stage, 0.0), state["run_dir"])
                for stage, runs in sorted(state["runs"].items(), key=lambda kv: gates.STAGES.index(kv[0]))]
    state["verdicts"] = verdicts
    for v in verdicts:
        (state["run_dir"] / f"gate-{v.stage}.json").write_text(json.dumps(v.to_json(), indent=2))
    (state["run_dir"] / "ledger.md").write_text(records.ledger(records.load(state["run_dir"] / "cases.jsonl"),
                                                               catalogue()))
    if any(not v.passed for v in verdicts) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    verdicts = config.stash[STATE_KEY].get("verdicts", [])
    if verdicts:
        terminalreporter.section(f"gates (profile {config.getoption('profile')})")
        terminalreporter.write_line(gates.table(verdicts))
        terminalreporter.write_line(f"records: {config.stash[STATE_KEY]['run_dir']}")
