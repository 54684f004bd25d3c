"""D-03: Locust, in its own process, bursts the real manager and nodes with real codex through the control API."""
from __future__ import annotations

from pathlib import Path

import allure
import pytest

from harness.gates import gates
from harness.load import burst
from harness.stack.stack import Stack


@pytest.mark.case("D-03")
async def test_burst(stack: Stack, run_dir: Path, gates_config: gates.Gates) -> None:
    """a short concurrent surge of chat users; thresholds on Locust's own figures, and exactly-once"""
    result = await burst.run(stack, burst.BurstSettings.from_gates(gates_config), run_dir / "D-burst")
    gates.record_measures(run_dir, "burst", gates.measure(gates_config, "burst", result.metric))
    allure.attach(result.report(), name="burst figures", attachment_type=allure.attachment_type.TEXT)
    allure.attach.file(result.out_dir / "locust.html", name="Locust report", attachment_type=allure.attachment_type.HTML)
    assert result.stats.requests > 0, "Locust made no requests: see the locust.log beside the report"
    failed = [f"{c.name}: {c.detail}" for c in burst.criteria(gates_config, result) if not c.passed]
    assert not failed
