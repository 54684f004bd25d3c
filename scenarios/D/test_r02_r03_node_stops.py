"""R-02 and R-03: a node that is stopped (SIGTERM) drains its turns; one that is killed (SIGKILL) holding an
undelivered result delivers it once after its restart, from the outbox on disk."""
from __future__ import annotations

import asyncio
import pytest

from harness.stack.procs import Proc
from harness.stack.stack import Stack
from runtime.backoff import Backoff
from runtime.protocol import Api, new_id


async def _dispatch(stack: Stack, node: str, prompt: str) -> dict[str, object]:
    return await stack.result(Api.DISPATCH, {"node_id": node, "prompt": prompt, "timeout": 60})


async def _exited(proc: Proc, within: float) -> None:
    async for _ in Backoff(0.1, factor=1).tries(within):
        if not proc.alive:
            return
    raise AssertionError(f"{proc.name} still running {within}s after SIGTERM")


@pytest.mark.case("R-02")
async def test_sigterm_drains_running_turns(stack: Stack) -> None:
    """SIGTERM: no new work, running turns finish within the drain timeout, the rest end retriable; all delivered"""
    run = new_id("r02")
    proc = await stack.add_node("r2", drain_timeout=8)
    turn = asyncio.create_task(_dispatch(stack, "r2", f"{run} finishes [[mock:slow=1.5]]"))
    await stack.wait_served(f"{run} finishes")
    proc.sigterm()
    await proc.wait_log("node_draining", timeout=5)
    late = await _dispatch(stack, "r2", f"{run} late")
    assert (late["ok"], late["error_kind"], late["retriable"]) == (False, "node_offline", True), late
    done = await turn
    assert done["ok"], f"a running turn was cut short instead of drained: {done}"
    await _exited(proc, 10)
    assert proc.log_lines("node_stopped"), "the node did not finish its own shutdown"
    assert await stack.serves(f"{run} finishes") == 1 and await stack.serves(f"{run} late") == 0

    # Past the drain timeout the rest is interrupted, and reported as retriable rather than lost.
    proc = await stack.add_node("r2b", drain_timeout=1)
    turn = asyncio.create_task(_dispatch(stack, "r2b", f"{run} too long [[mock:slow=20]]"))
    await stack.wait_served(f"{run} too long")
    proc.sigterm()
    cut = await asyncio.wait_for(turn, 15)
    assert (cut["ok"], cut["error_kind"], cut["retriable"]) == (False, "node_offline", True), cut
    assert "drain timeout" in str(cut["error"]), cut
    await _exited(proc, 15)


@pytest.mark.case("R-03")
async def test_sigkill_with_undelivered_result(stack: Stack) -> None:
    """the result of a turn that ended while the manager was unreachable survives a SIGKILL and arrives once"""
    assert stack.toxics is not None
    run = new_id("r03")
    proc = await stack.add_node("r3")
    prompt = f"{run} held [[mock:slow=1]]"
    turn = asyncio.create_task(_dispatch(stack, "r3", prompt))
    await stack.wait_served(f"{run} held")
    finals = len(proc.log_lines("task_final"))
    async with stack.toxics.link_down(stack.manager_link("r3")):
        await proc.wait_log("task_final", seen=finals, timeout=20)  # the turn ends with nobody to tell
        proc.kill()
    registrations = len(proc.log_lines("registered"))
    proc.start()
    await proc.wait_log("registered", seen=registrations, timeout=30)
    result = await asyncio.wait_for(turn, 30)
    assert result["ok"], f"the result held on disk was not delivered: {result}"
    assert await stack.serves(f"{run} held") == 1, "the turn ran again after the restart"
    status, env = await stack.request("GET", Api.TASKS, {"task_id": str(result["task_id"])})
    assert env["result"]["task"]["state"] == "done", env
