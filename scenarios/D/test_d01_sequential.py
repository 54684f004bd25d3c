"""D-01: the real manager and a real node with real codex, the mock model healthy and then dropping streams."""
from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import allure
import pytest

from harness.checkers import checkers
from harness.history import evidence
from harness.history.history import History
from harness.load.steady import Client, LoadSettings, Operations
from harness.stack.stack import Stack
from runtime.protocol import kind_of, user_error_line

TURNS = 5  # the seed's five sequential dispatch_text


@pytest.mark.case("D-01")
async def test_sequential_turns_healthy_then_upstream_faulted(stack: Stack, run_dir: Path) -> None:
    """5/5 business ok with a healthy upstream; each upstream_disconnect (retriable) when it drops streams"""
    await stack.add_node("d1")
    history = History(run_dir / "D-01" / "history.jsonl")
    async with aiohttp.ClientSession() as http:
        client = Client(http, stack.manager_url, stack.control_token)
        ops = Operations(client, history, LoadSettings(1, {}, 30, 1, 1), f"d01-{int(time.time())}")
        healthy = [await ops.run("dispatch_text", "d1", ops.chat("d1", 0)) for _ in range(TURNS)]
        await stack.upstream("POST", "/_mock/mode", {"behavior": "drop"})
        try:
            faulted = [await ops.run("dispatch_text", "d1", ops.chat("d1", 0)) for _ in range(TURNS)]
        finally:
            await stack.upstream("POST", "/_mock/mode", {"behavior": None})
        after = await ops.run("dispatch_text", "d1", ops.chat("d1", 0))
        ev = await evidence.gather(stack, client, history.ops)

    # Latency is judged by gate D's thresholds on the soak's history, not here: this case reports it.
    allure.attach(checkers.report(checkers.summarize(history.ops, [], ev, [], 0, 0.05, 3)), name="D-01 figures",
                  attachment_type=allure.attachment_type.TEXT)
    allure.attach.file(history.path, name="history", attachment_type=allure.attachment_type.TEXT)
    assert [o.outcome for o in healthy] == ["ok"] * TURNS, [(o.outcome, o.error_kind, o.detail) for o in healthy]
    for op in faulted:
        assert (op.outcome, op.error_kind, op.retriable) == ("fail", "upstream_disconnect", True), \
            (op.outcome, op.error_kind, op.retriable, op.detail)
    assert "kind=upstream_disconnect, retriable=yes" in user_error_line(faulted[0].error_kind or "")
    assert kind_of("upstream_disconnect").retriable
    assert after.outcome == "ok", f"the turn after the fault failed: {after.error_kind} {after.detail}"
    once = checkers.exactly_once(history.ops, ev)
    assert (once.duplicates, once.lost, once.unrecorded, once.inconsistent) == (0, 0, 0, 0), once.examples
    assert all(ev.serves.get(o.prompt or "") == 1 for o in history.ops), "each turn asks the model exactly once"
