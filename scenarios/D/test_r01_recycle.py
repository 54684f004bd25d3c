"""R-01: a node bounds codex's memory by restarting its child between turns; threads resume, nothing runs twice."""
from __future__ import annotations

import pytest

from harness.stack.stack import Stack
from runtime.backoff import Backoff
from runtime.protocol import Api, new_id

THREADS = 3  # the node's recycle_threads for this case: the child is restarted once it has loaded this many


async def _turn(stack: Stack, node: str, prompt: str, thread_id: str | None = None) -> dict[str, object]:
    body = {"node_id": node, "prompt": prompt, "timeout": 60, **({"thread_id": thread_id} if thread_id else {})}
    result = await stack.result(Api.DISPATCH, body)
    assert result["ok"], result
    return result


@pytest.mark.case("R-01")
async def test_codex_child_recycled_between_turns(stack: Stack) -> None:
    """past recycle_threads the codex child is restarted between turns; old threads resume; each turn runs once"""
    node = "r1"
    proc = await stack.add_node(node, recycle_threads=THREADS)
    first_child = proc.children_named("codex")[0].pid
    run = new_id("r01")
    threads = [str((await _turn(stack, node, f"{run} thread {i}"))["thread_id"]) for i in range(THREADS)]
    line = await proc.wait_log("appserver_recycled", timeout=15)
    assert f"threads {THREADS} >= {THREADS}" in line, line
    await proc.wait_log("appserver_ready", seen=1, timeout=15)
    assert proc.children_named("codex")[0].pid != first_child, "the codex child was not replaced"

    # The first thread lived in the old child: its next turn resumes it in the new one, history kept.
    again = await _turn(stack, node, f"{run} back on thread 0", threads[0])
    assert again["thread_id"] == threads[0], again
    assert "op=appserver_exited" not in "\n".join(proc.log_lines()), "a recycle must not look like a crash"
    for i in range(THREADS):
        assert await stack.serves(f"{run} thread {i}") == 1, f"turn {i} reached the model more than once"
    assert await stack.serves(f"{run} back on thread 0") == 1
    assert len(proc.log_lines("registered")) == 1, "a recycle must not drop the node's link to the manager"
    # The manager hears of it with the node's next heartbeat, and /metrics shows it.
    shown = 0.0
    async for _ in Backoff(0.5, factor=1).tries(20):
        if (shown := await stack.gauge("relay_codex_recycles")) == 1:
            break
    assert shown == 1, f"relay_codex_recycles is {shown}"
