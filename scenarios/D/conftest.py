"""Stage D's fixtures: one soak per session, shared by the cases that judge it (D-02, D-04, D-05), and R-06's
torture run."""
from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from harness.gates import gates
from harness.gates.plugin import GATES_KEY
from harness.load.soak import SoakRun, SoakSettings
from harness.load.soak import run as run_soak
from harness.load.torture import figures as torture_figures
from harness.stack.stack import Stack

# Past its own duration, a soak settles, gathers evidence and draws; a burst waits for its last answers.
AFTER_S = 300
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pyproject's 300 s per test cannot hold a soak: give D's cases the profile's duration plus the wind-down."""
    g = config.stash[GATES_KEY]
    longest = max(float(g.setting(f"gates.D.{key}.duration_s")) for key in ("soak", "burst", "torture"))
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.timeout(longest + AFTER_S))


@pytest.fixture(scope="module")
def say(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Progress goes to the terminal as it happens, past pytest's output capture."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)
    return write


async def judged_soak(stack: Stack, settings: SoakSettings, out: Path, say: Callable[[str], None]) -> SoakRun:
    """A soak judged by the checkers; Ctrl-C ends it early, judged all the same."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        result = await run_soak(stack, settings, out, stop, say)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    say(result.report())
    return result


@pytest.fixture(scope="module")
async def soak(stack: Stack, run_dir: Path, gates_config: gates.Gates,
               say: Callable[[str], None]) -> AsyncIterator[SoakRun]:
    """The profile's soak with its seeded faults."""
    result = await judged_soak(stack, SoakSettings.from_gates(gates_config), run_dir / "D-soak", say)
    gates.record_measures(run_dir, "soak", gates.measure(gates_config, "soak", result.summary.metric))
    yield result


@pytest.fixture(scope="module")
async def torture(stack: Stack, run_dir: Path, gates_config: gates.Gates,
                  say: Callable[[str], None]) -> AsyncIterator[SoakRun]:
    """One seeded run of the profile's torture soak (gates.D.torture), with the bot in the chain."""
    result = await judged_soak(stack, SoakSettings.torture(gates_config), run_dir / "R-06-torture", say)
    (result.out_dir / "torture.json").write_text(json.dumps(torture_figures(gates_config, result), indent=1,
                                                            default=str))
    gates.record_measures(run_dir, "torture", gates.measure(gates_config, "torture", result.summary.metric))
    yield result
