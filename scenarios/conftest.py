"""Fixtures shared by every stage: the run's report folder and a real stack per module."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from harness.gates.gates import Gates
from harness.gates.plugin import GATES_KEY, STATE_KEY
from harness.stack.procs import reap_all
from harness.stack.stack import Stack


@pytest.fixture(scope="session")
def run_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    path: Path = request.config.stash[STATE_KEY]["run_dir"]
    yield path
    leaked = reap_all()
    assert not leaked, f"processes outlived their fixtures: {leaked}"


def _module_dir(run_dir: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh folder (DB, logs, Toxiproxy proxy names) for each stack: each xdist worker boots its own, and
    one that comes back to a module after another boots a new one."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    if worker := os.environ.get("PYTEST_XDIST_WORKER"):
        name = f"{name}-{worker}"
    path = run_dir / "stacks" / name
    for n in range(2, 1000):
        if not path.exists():
            break
        path = run_dir / "stacks" / f"{name}-{n}"
    return path


@pytest.fixture(scope="module")
async def stack(run_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """One real stack per test module; a module may pass manager flags via `STACK_MANAGER_ARGS`, and have every
    service read its secrets from files with `STACK_SECRET_FILES = True`."""
    s = Stack(_module_dir(run_dir, request), getattr(request.module, "STACK_MANAGER_ARGS", None),
              secret_files=getattr(request.module, "STACK_SECRET_FILES", False))
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


@pytest.fixture(scope="session")
def gates_config(request: pytest.FixtureRequest) -> Gates:
    """gates.yaml under the run's profile: where a case reads any limit it checks against."""
    return request.config.stash[GATES_KEY]
