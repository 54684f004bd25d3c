"""Stage D's fixtures: one soak per session, shared by the cases that judge it (D-02, D-04, D-05)."""
from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.gates import gates
from harness.gates.plugin import GATES_KEY
from harness.load.soak import SoakRun, SoakSettings
from harness.load.soak import run as run_soak
from harness.stack.stack import Stack

# Past its own duration, a soak settles, gathers evidence and draws; a burst waits for its last answers.
AFTER_S = 300
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pyproject's 300 s per test cannot hold a soak: give D's cases the profile's duration plus the wind-down."""
    g = config.stash[GATES_KEY]
    longest = max(float(g.setting("gates.D.soak.duration_s")), float(g.setting("gates.D.burst.duration_s")))
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.timeout(longest + AFTER_S))


@pytest.fixture(scope="module")
async def soak(stack: Stack, run_dir: Path, gates_config: gates.Gates,
               request: pytest.FixtureRequest) -> AsyncIterator[SoakRun]:
    """The profile's soak with its seeded faults, judged by the checkers; Ctrl-C ends it early, judged all the same."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        """Progress goes to the terminal as it happens, past pytest's output capture."""
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        result = await run_soak(stack, SoakSettings.from_gates(gates_config), run_dir / "D-soak", stop, say)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    gates.record_measures(run_dir, "soak", gates.measure(gates_config, "soak", result.summary.metric))
    say(result.report())
    yield result
