"""A2, the real node and codex's protocol: what the node says to a codex child, read back from the node's
app-server traffic log (Stack.traffic)."""
from __future__ import annotations

import asyncio

import pytest

from harness.stack.stack import Stack
from runtime.protocol import Api, new_id

NODE = "a2proto"


@pytest.fixture(scope="module")
async def node(stack: Stack) -> str:
    await stack.add_node(NODE)
    return NODE


@pytest.mark.case("P1-18")
async def test_codex_killed_mid_turn(stack: Stack, node: str) -> None:
    """codex is killed during a turn: the node sends no turn/interrupt to the new child for a thread it never had;
    the task fails once, as appserver_crash"""
    proc = stack.procs[node]
    prompt = f"{new_id('p118')} killed mid-turn"
    turn = asyncio.create_task(stack.result(Api.DISPATCH, {"node_id": node, "prompt": f"{prompt} [[mock:hang]]",
                                                           "timeout": 30}))
    await stack.wait_served(prompt)  # codex is mid-turn, waiting on the model
    ready = len(proc.log_lines("appserver_ready"))
    [codex] = proc.children_named("codex")
    old = max(line["gen"] for line in stack.traffic(node))
    codex.kill()
    result = await turn
    assert result["ok"] is False and result["error_kind"] == "appserver_crash" and result["retriable"] is True, result
    # The node reports a result only after its interrupt attempt: any interrupt it sent is in the log by now.
    await proc.wait_log("appserver_ready", seen=ready)  # a new child is up, the one a stray interrupt would reach
    strays = [line for line in stack.traffic(node) if line["dir"] == ">>" and line["gen"] > old
              and line["msg"].get("method") == "turn/interrupt"]
    assert not strays, f"turn/interrupt went to a codex child that never had the turn: {strays}"
    task_id = result["task_id"]
    task = (await stack.call(Api.TASKS, {"task_id": task_id}))["task"]
    assert task["state"] == "failed" and task["error_kind"] == "appserver_crash", task
    finals = [ln for ln in proc.log_lines("task_final") if f"task_id={task_id}" in ln]
    assert len(finals) == 1, f"the node ended the task {len(finals)} times: {finals}"
    repeats = [ln for ln in stack.procs["manager"].log_lines("duplicate_result_ignored") if task_id in ln]
    assert not repeats, repeats
    after = await stack.result(Api.DISPATCH, {"node_id": node, "prompt": f"{prompt}, then the next", "timeout": 30})
    assert after["ok"], after
