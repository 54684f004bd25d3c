"""Fixtures shared by every stage: the run's report folder, a real stack per module, case labels."""
from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import allure
import pytest

from harness import paths
from harness.procs import reap_all
from harness.stack import Stack

RUN_ID = os.environ.get("HARNESS_RUN_ID") or time.strftime("run-%Y%m%d-%H%M%S")


@pytest.fixture(scope="session")
def run_dir() -> Iterator[Path]:
    path = paths.REPORTS_DIR / RUN_ID
    path.mkdir(parents=True, exist_ok=True)
    yield path
    leaked = reap_all()
    assert not leaked, f"processes outlived their fixtures: {leaked}"


def _module_dir(run_dir: Path, request: pytest.FixtureRequest) -> Path:
    return run_dir / "stacks" / request.module.__name__.rsplit(".", 1)[-1]


@pytest.fixture(scope="module")
async def stack(run_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """One real stack per test module; a module may pass manager flags via `STACK_MANAGER_ARGS`."""
    s = Stack(_module_dir(run_dir, request), getattr(request.module, "STACK_MANAGER_ARGS", None))
    try:
        await s.start()
        yield s
    finally:
        await s.close()


@pytest.fixture(autouse=True)
async def _clean_links(request: pytest.FixtureRequest) -> None:
    # A toxic left by a failed case must not leak into the next one.
    if "stack" in request.fixturenames:
        s: Stack = request.getfixturevalue("stack")
        if s.toxics is not None:
            await s.toxics.reset()


@pytest.fixture(autouse=True)
def _case_labels(request: pytest.FixtureRequest) -> None:
    case = request.node.get_closest_marker("case")
    stage = request.node.get_closest_marker("stage")
    if case is not None:
        case_id, kind = case.args
        allure.dynamic.id(case_id)
        allure.dynamic.label("case_id", case_id)
        allure.dynamic.label("case_kind", kind)
        allure.dynamic.title(f"{case_id}: {request.node.function.__doc__ or request.node.name}".strip())
    if stage is not None:
        allure.dynamic.parent_suite(stage.args[0][0])
        allure.dynamic.suite(stage.args[0])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A scenario without a case id would be invisible in the report and the gates: refuse it.
    missing = [i.nodeid for i in items if i.get_closest_marker("case") is None and "selftest" not in i.nodeid]
    if missing:
        raise pytest.UsageError(f"scenarios without @pytest.mark.case: {missing}")
