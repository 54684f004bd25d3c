"""B1: the real manager and real nodes with real codex, every link through Toxiproxy."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import aiohttp
import pytest

from harness.gates.gates import Gates
from harness.stack.stack import Stack
from runtime.backoff import Backoff
from runtime.protocol import Api, new_id


@pytest.fixture(scope="module")
async def b1_node(stack: Stack) -> AsyncIterator[str]:
    await stack.add_node("b1n1")
    yield "b1n1"


@pytest.fixture
async def node(stack: Stack, b1_node: str) -> str:
    """Each case starts with the node online. A case that failed fast would otherwise hand the next one a
    node still reconnecting after its fault, and that one would fail fast in turn."""
    await stack.wait_online(b1_node, timeout=20)
    return b1_node


async def dispatch(stack: Stack, node_id: str, prompt: str, timeout: float = 30, **extra: str) -> dict:
    return await stack.result(Api.DISPATCH, {"node_id": node_id, "prompt": prompt, "timeout": timeout, **extra})


async def exactly_once(stack: Stack, task_id: str, prompt: str) -> dict:
    """The evidence: one final state in the DB, one final log line, one serve by the model."""
    task = (await stack.call(Api.TASKS, {"task_id": task_id}))["task"]
    assert task["state"] in ("done", "failed"), task
    finals = [ln for ln in stack.procs["manager"].log_lines("task_final") if f"task_id={task_id}" in ln]
    assert len(finals) == 1, f"the manager recorded {len(finals)} final states for {task_id}"
    assert await stack.serves(prompt) == 1, f"the model was asked {await stack.serves(prompt)} times"
    return task


@pytest.mark.case("B1-01")
async def test_manager_restart_node_reconnects(stack: Stack, node: str) -> None:
    """the manager is killed and restarted; the node reconnects by itself"""
    await stack.restart_manager()
    await stack.wait_online(node, timeout=20)
    assert (await dispatch(stack, node, f"after restart {new_id('p')}"))["ok"]


@pytest.mark.case("B1-02")
async def test_restart_same_port_and_db(stack: Stack, node: str) -> None:
    """after a restart on the same port and DB the online list is consistent"""
    await stack.restart_manager()
    await stack.wait_online(node, timeout=20)
    servers = await stack.call(Api.SERVERS)
    assert servers["online"].count(node) == 1
    stored = sorted(s["node_id"] for s in servers["servers"] if s["stored_online"])
    assert stored == sorted(servers["online"])


@pytest.mark.case("B1-03")
async def test_thread_list_cold_after_reconnect(stack: Stack, node: str, gates_config: Gates) -> None:
    """after a reconnect, thread/list with the cold timeout passes"""
    await stack.restart_manager()
    await stack.wait_online(node, timeout=20)
    limit = gates_config.setting("cases.B1-03.thread_list_timeout_s")
    result = await stack.result(Api.APPSERVER, {"node_id": node, "method": "thread/list", "params": {}, "timeout": limit})
    assert result["ok"] and "data" in result["result"], result


@pytest.mark.case("B1-04")
async def test_thread_list_warm_after_reconnect(stack: Stack, node: str, gates_config: Gates) -> None:
    """after a reconnect, thread/list with the warm timeout passes (it timed out in the seed)"""
    limit = gates_config.setting("cases.B1-04.thread_list_timeout_s")
    listed = {"node_id": node, "method": "thread/list", "params": {}, "timeout": limit}
    assert (await stack.result(Api.APPSERVER, listed))["ok"]
    assert stack.toxics is not None
    async with stack.toxics.reset_peer(stack.manager_link(node)):
        await stack.wait_online(node, online=False, timeout=20)
    await stack.wait_online(node, timeout=20)
    for _ in range(3):
        result = await stack.result(Api.APPSERVER, listed)
        assert result["ok"], result


@pytest.mark.case("B1-05")
async def test_register_auth_end_to_end(stack: Stack) -> None:
    """a valid token is accepted; a wrong one and a revoked one are refused"""
    good = new_id("b1auth")
    await stack.add_node(good)
    bad = new_id("b1bad")
    await stack.add_node(bad, token="crt_wrong", wait=False)
    assert "error_kind=unauthorized" in await stack.procs[bad].wait_log("register_rejected")
    assert bad not in (await stack.call(Api.SERVERS))["online"]
    stack.procs[bad].terminate()

    token_id = next(t["token_id"] for t in (await stack.call(Api.TOKENS, method="GET"))["tokens"]
                    if t["node_id"] == good and t["revoked_at"] is None)
    assert (await stack.call(Api.TOKENS_REVOKE, {"token_id": token_id}))["closed_sessions"] == [good]
    await stack.wait_online(good, online=False, timeout=10)
    assert "error_kind=unauthorized" in await stack.procs[good].wait_log("register_rejected")  # retried, refused
    assert good not in (await stack.call(Api.SERVERS))["online"]
    stack.procs[good].terminate()


@pytest.mark.case("B1-06")
async def test_dispatch_once_and_task(stack: Stack, node: str) -> None:
    """dispatch and dispatch_text both return the result"""
    prompt = f"once {new_id('p')}"
    once = await dispatch(stack, node, prompt)
    assert once["ok"] and once["text"] == f"mock reply: {prompt}", once
    chat = new_id("chat")
    text = await stack.result(Api.DISPATCH_TEXT, {"chat_key": chat, "node_id": node, "text": prompt + " again"})
    assert text["ok"] and text["text"] == f"mock reply: {prompt} again", text
    await exactly_once(stack, once["task_id"], prompt)


async def _decide_when_asked(stack: Stack, task_id: str, decision: str) -> dict:
    async for _ in Backoff(0.05, factor=1).tries(10):
        for approval in (await stack.call(Api.APPROVALS, {"state": "pending"}))["approvals"]:
            if approval.get("task_id") == task_id:
                # What is asked: a command where it runs, or a file change's files.
                assert approval["command"] and approval["cwd"] if approval["kind"] == "command" else approval["changes"]
                return await stack.call(Api.APPROVALS_DECIDE, {"approval_id": approval["approval_id"],
                                                               "decision": decision, "decided_by": "b1"})
    raise AssertionError(f"no approval for {task_id}")


@pytest.mark.case("B1-07")
async def test_approval_end_to_end(stack: Stack, node: str) -> None:
    """approve runs the command and decline tells the model; both close the loop. The decline is of a file change:
    codex 0.171 offers `decline` there, and not for an escalated command (P1-08)."""
    for decision, marker, expect in (("accept", "approve", "relay-approved"), ("decline", "patch", "rejected")):
        task_id = new_id("task")
        turn = asyncio.create_task(dispatch(stack, node, f"{decision} [[mock:{marker}]] {task_id}", task_id=task_id))
        decided = await _decide_when_asked(stack, task_id, decision)
        assert decided["delivered"]
        result = await turn
        assert result["ok"] and expect in result["text"], result


@pytest.mark.case("B1-08")
async def test_node_restart_threads_resume(stack: Stack, node: str) -> None:
    """after a node restart it re-registers, and an existing thread resumes with its history"""
    chat = new_id("chat")
    first = await stack.result(Api.DISPATCH_TEXT, {"chat_key": chat, "node_id": node, "text": "remember me"})
    assert first["ok"], first
    await stack.restart_node(node)
    second = await stack.result(Api.DISPATCH_TEXT, {"chat_key": chat, "node_id": node,
                                                    "text": "[[mock:history]] how many"})
    assert second["ok"] and second["thread_id"] == first["thread_id"], second
    assert second["text"] == "history: 2 user messages"


@pytest.mark.case("B1-09")
@pytest.mark.parametrize("cut", ["link_down", "reset_peer", "hold"])
async def test_network_cut_and_restore(stack: Stack, node: str, cut: str) -> None:
    """a cut during a turn: the link recovers and the result made during the cut is delivered once"""
    assert stack.toxics is not None
    link, task_id = stack.manager_link(node), new_id("task")
    prompt = f"through the cut {task_id}"
    turn = asyncio.create_task(dispatch(stack, node, f"{prompt} [[mock:slow=1.5]]", timeout=60, task_id=task_id))
    await stack.wait_served(prompt)  # the turn is mid-stream in codex when the cut comes
    async with AsyncExitStack() as faults:
        if cut == "hold":  # data stops both ways, the sockets stay open: only silence gives it away
            await faults.enter_async_context(stack.toxics.hold(link))
            await faults.enter_async_context(stack.toxics.hold(link, stream="upstream"))
        else:
            await faults.enter_async_context(getattr(stack.toxics, cut)(link))
        await asyncio.sleep(2.5)  # the subject: the turn finishes while the node cannot reach the manager
    restored = time.time()
    result = await turn
    assert result["ok"] and result["text"] == f"mock reply: {prompt}", result
    await stack.wait_heartbeat(node, after=restored, timeout=20)  # frames flow again, not a stale socket
    await exactly_once(stack, task_id, prompt)


@pytest.mark.case("B1-10")
async def test_duplicate_task_id_and_reply(stack: Stack, node: str) -> None:
    """a repeated task_id runs once; a duplicate reply is ignored"""
    task_id = new_id("task")
    prompt = f"only once {task_id}"
    both = await asyncio.gather(dispatch(stack, node, prompt, task_id=task_id),
                                dispatch(stack, node, prompt, task_id=task_id))
    assert [r["ok"] for r in both] == [True, True] and both[0]["text"] == both[1]["text"], both
    later = await dispatch(stack, node, prompt, task_id=task_id)
    assert later["duplicate"] is True and later["text"] == both[0]["text"]
    await exactly_once(stack, task_id, prompt)

    # A duplicate reply for real: cut the link mid-turn so the result waits in the node's outbox; on
    # reconnect the node sends it and also answers the manager's task_sync with it. One must be ignored.
    assert stack.toxics is not None
    dupes_before = await stack.metric("duplicate_results")
    task_id = new_id("task")
    prompt = f"twice delivered {task_id}"
    turn = asyncio.create_task(dispatch(stack, node, f"{prompt} [[mock:slow=1]]", timeout=60, task_id=task_id))
    await stack.wait_served(prompt)  # mid-turn: the result will be made while the link is cut
    async with stack.toxics.reset_peer(stack.manager_link(node)):
        await asyncio.sleep(2.0)  # the subject: the cut outlasts the turn, so its result waits in the outbox
    result = await turn
    assert result["ok"], result
    await exactly_once(stack, task_id, prompt)
    assert await stack.metric("duplicate_results") == dupes_before + 1


@pytest.mark.case("B1-11")
async def test_manager_killed_mid_task(stack: Stack, node: str) -> None:
    """the manager is SIGKILLed mid-task; after restart the task reaches one final state, run once"""
    task_id = new_id("task")
    prompt = f"survive the crash {task_id}"
    turn = asyncio.create_task(dispatch(stack, node, f"{prompt} [[mock:slow=2]]", timeout=60, task_id=task_id))
    await stack.wait_served(prompt)  # the task is running on the node when the manager dies
    await stack.restart_manager()
    with pytest.raises(aiohttp.ClientError):
        await turn  # the caller's connection died with the manager; the task must not
    await stack.wait_online(node, timeout=20)
    async for _ in Backoff(0.1, factor=1).tries(10):
        if (await stack.call(Api.TASKS, {"task_id": task_id}))["task"]["state"] in ("done", "failed"):
            break
    task = await exactly_once(stack, task_id, prompt)
    assert task["state"] == "done" and task["result"]["text"] == f"mock reply: {prompt}"
