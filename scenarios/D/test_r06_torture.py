"""R-06: the torture soak in short. One seeded run of the profile's torture (gates.D.torture): faults packed densely,
every kind at least once, node SIGTERM and bot SIGKILL among them, while a share of the turns goes through the real
bot. Nothing lost, run twice or dropped; every fault recovered from within gates.yaml. The long runs that reach
gates.D.torture.min_faults are `harness torture`'s (README, stage D)."""
from __future__ import annotations

import allure
import pytest

from harness.gates import gates
from harness.load.soak import SoakRun
from harness.load.torture import DEFECTS

TEXT = allure.attachment_type.TEXT


@pytest.mark.case("R-06")
async def test_torture(torture: SoakRun, gates_config: gates.Gates) -> None:
    """every fault kind, node SIGTERM and bot SIGKILL among them: duplicates, lost, dropped 0; RTO and success
    within gates.yaml"""
    for name in ("report.txt", "torture.json", "schedule.json"):
        if (torture.out_dir / name).exists():
            allure.attach.file(torture.out_dir / name, name=name, attachment_type=TEXT)
    assert not torture.stopped_early, "the torture run was stopped before its duration"
    played = {f.fault for f in torture.faults}
    assert played == set(torture.settings.kinds), (f"kinds that never fired: {set(torture.settings.kinds) - played}; "
                                                   f"skipped: {torture.skipped}")
    # A node's graceful stop ends by itself and takes its codex child with it; a half-open link is noticed.
    stops = [f for f in torture.faults if f.fault == "node_sigterm"]
    assert all("exit_s" in f.params for f in stops), [f.params for f in stops]
    defects = [f"{f.fault} on {f.target}: {f.params}" for f in torture.faults if set(DEFECTS) & f.params.keys()]
    assert not defects, defects
    kills = [n for f in torture.faults if f.fault == "bot_kill" for n in f.params.get("turns_running", [])]
    assert any(kills), f"no bot kill caught a turn through the bot running: {kills}"
    chats = [o for o in torture.ops if o.op == "chat"]
    assert chats and any(o.outcome == "ok" for o in chats), "no turn went through the bot"
    never = [f"{r.fault} on {r.target}" for r in torture.summary.recoveries if r.rto_s is None]
    assert not never, f"never recovered: {never}"
    eo = torture.summary.exactly_once
    assert eo is not None
    assert not torture.still_open, f"tasks still open after settling: {torture.still_open[:5]}"
    assert (eo.duplicates, eo.unrecorded, eo.lost, eo.dropped, eo.inconsistent) == (0, 0, 0, 0, 0), eo.examples
    failed = [f"{c.name}: {c.detail}" for c in gates.judge(gates_config, "torture", gates.measure(
        gates_config, "torture", torture.summary.metric)) if not c.passed]
    assert not failed, failed
