"""A2: the real node with the real codex app-server against the mock upstream."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from harness.ends.peers import ScriptedManager
from harness.stack import paths, ports
from harness.stack.stack import Stack
from runtime.backoff import Backoff
from runtime.node.config import EXIT_CODEX, EXIT_CWD
from runtime.protocol import Api, Event, Msg, decode, new_id


@pytest.fixture(scope="module")
async def node(stack: Stack) -> AsyncIterator[str]:
    """One real node shared by the cases that leave it healthy."""
    await stack.add_node("a2n1")
    yield "a2n1"


@pytest.fixture(scope="module")
async def queue_node(stack: Stack) -> AsyncIterator[str]:
    await stack.add_node("a2q", max_pending=1)
    yield "a2q"


@pytest.fixture(scope="module")
async def impatient_node(stack: Stack) -> AsyncIterator[str]:
    """A node whose approvals expire after half a second, for A2-10."""
    await stack.add_node("a2appr", approval_timeout=0.5)
    yield "a2appr"


async def dispatch(stack: Stack, node_id: str, prompt: str, timeout: float = 30) -> dict:
    return await stack.result(Api.DISPATCH, {"node_id": node_id, "prompt": prompt, "timeout": timeout})


def run_node(tmp: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "runtime.node.main", "--node-id", "bad", "--token", "t",
            "--manager-url", "ws://127.0.0.1:9/ws/node", "--cwd", str(tmp), "--codex-bin", str(paths.codex_bin())]
    for key, value in overrides.items():
        argv[argv.index(f"--{key.replace('_', '-')}") + 1] = value
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def assert_structured_failure(out: subprocess.CompletedProcess[str], code: int, needle: str) -> None:
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    line = out.stderr.strip().splitlines()[-1]
    assert "op=startup_failed" in line and f"exit_code={code}" in line and needle in line and "fix=" in line


@pytest.mark.case("A2-01")
def test_cwd_missing(tmp_path: Path) -> None:
    """a missing cwd gives a structured error, a documented exit code and no traceback"""
    assert_structured_failure(run_node(tmp_path, cwd=str(tmp_path / "nope")), EXIT_CWD, "cwd does not exist")


@pytest.mark.case("A2-02")
def test_codex_binary_missing(tmp_path: Path) -> None:
    """a missing codex binary gives a structured error, a documented exit code and no traceback"""
    out = run_node(tmp_path, codex_bin=str(tmp_path / "no-codex"))
    assert_structured_failure(out, EXIT_CODEX, "codex binary not found")


@pytest.mark.case("A2-03")
async def test_reconnect_backoff_grows_and_caps(stack: Stack) -> None:
    """with the manager refusing, reconnect intervals grow by the factor and stop at the cap"""
    refusing = await ScriptedManager(accept=False).start()
    try:
        # Same code path as production (0.5 s x1.7 up to 10 s), scaled down so the case runs in seconds. The
        # first interval stays at 0.1 s: each attempt's own connect time, longer on a loaded machine, adds to
        # every gap, and a shorter first interval would drown the growth in it.
        node_id = new_id("a2backoff")
        await stack.add_node(node_id, wait=False, manager_url=f"ws://127.0.0.1:{refusing.port}{Api.NODE_WS}",
                             backoff_initial=0.1, backoff_max=1.0, backoff_jitter=0.1)
        connects = await refusing.connected(9, timeout=30)  # 8 gaps: growth, then the cap
        gaps = [b - a for a, b in zip(connects, connects[1:], strict=False)]
        assert len(gaps) >= 8, gaps
        assert gaps[3] > gaps[0] * 2, f"intervals do not grow: {gaps}"
        assert max(gaps) < 1.0 * 1.1 + 0.5, f"intervals exceed the cap: {gaps}"  # cap + jitter + a slow start
        assert gaps[-1] > 0.8, f"intervals never reached the cap: {gaps}"
    finally:
        stack.procs[node_id].terminate()
        await refusing.stop()


@pytest.mark.case("A2-04")
async def test_registers_when_manager_returns(stack: Stack) -> None:
    """a node started with no manager registers by itself once one appears"""
    # Bound but not listening: the node's connects are refused, and no other process can take the port.
    sock, node_id = ports.reserved(), new_id("a2late")
    port = sock.getsockname()[1]
    await stack.add_node(node_id, wait=False, manager_url=f"ws://127.0.0.1:{port}{Api.NODE_WS}",
                         backoff_initial=0.1, backoff_max=1.0)
    await stack.procs[node_id].wait_log("connect_failed", seen=1)  # a few refused attempts first
    late = await ScriptedManager().start(sock)
    try:
        reg = await late.registered(timeout=10)
        assert reg["node_id"] == node_id
        beat = await late.expect(Msg.HEARTBEAT, timeout=5)
        assert beat["node_id"] == node_id
    finally:
        stack.procs[node_id].terminate()
        await late.stop()


@pytest.mark.case("A2-05")
async def test_queue_full(stack: Stack, queue_node: str) -> None:
    """max_pending=1 and two concurrent turns on one thread: the second is refused at once"""
    first = await dispatch(stack, queue_node, "start a thread")
    busy = f"busy {new_id('p')}"
    slow = asyncio.create_task(stack.result(Api.DISPATCH, {"node_id": queue_node, "prompt": f"{busy} [[mock:slow=2]]",
                                                           "thread_id": first["thread_id"], "timeout": 30}))
    await stack.wait_served(busy)  # the one slot is taken
    second = await stack.result(Api.DISPATCH, {"node_id": queue_node, "prompt": "second", "timeout": 30,
                                               "thread_id": first["thread_id"]})
    assert not slow.done(), "a full queue must answer at once, not after the running turn"
    assert second["ok"] is False and second["error"] == "node queue full (max=1)", second
    assert second["error_kind"] == "queue_full" and second["retriable"] is False
    assert (await slow)["ok"] is True


@pytest.mark.case("A2-06")
async def test_execution_timeout(stack: Stack, node: str) -> None:
    """a long turn with a short timeout fails as timeout"""
    result = await dispatch(stack, node, "long one [[mock:slow=5]]", timeout=0.5)
    assert result["ok"] is False and result["error_kind"] == "timeout", result


@pytest.mark.case("A2-07")
async def test_startup(stack: Stack, node: str) -> None:
    """the node starts codex app-server, connects and registers"""
    assert node in (await stack.call(Api.SERVERS))["online"]
    # It registers while codex is still starting: a worker's first case may meet a node seconds old.
    await stack.procs[node].wait_log("appserver_ready")
    assert stack.procs[node].children_named("codex"), [c.pid for c in stack.procs[node].children()]


@pytest.mark.case("A2-08")
async def test_task_progress_result(stack: Stack, node: str) -> None:
    """a task reports progress events, then its result text"""
    assert stack._http is not None
    ws = await stack._http.ws_connect(stack.manager_url + Api.EVENTS,
                                      headers={"Authorization": f"Bearer {stack.control_token}"})
    try:
        result = await dispatch(stack, node, "tell me something [[mock:slow=0.2]]")
        assert result["ok"] and result["text"] == "mock reply: tell me something", result
        seen: list[dict] = []
        while not any(e["type"] == Event.TASK_RESULT and e["task_id"] == result["task_id"] for e in seen):
            seen.append(decode((await ws.receive(timeout=5)).data))
        progress = [e for e in seen if e["type"] == Event.TASK_PROGRESS and e["task_id"] == result["task_id"]]
        assert progress and result["text"].startswith(progress[0]["text"])
    finally:
        await ws.close()


async def offline_events(ws: aiohttp.ClientWebSocketResponse, node: str) -> list[dict]:
    """The node_offline events for `node` among those already sent; a quiet socket means no more came."""
    offline = []
    while True:
        try:
            frame = await ws.receive(timeout=0.5 if not offline else 0.1)
        except TimeoutError:
            return offline
        if frame.type != aiohttp.WSMsgType.TEXT:
            return offline
        event = json.loads(frame.data)
        if event["type"] == Event.NODE_OFFLINE and event["node_id"] == node:
            offline.append(event)


@pytest.mark.case("A2-09")
async def test_jitter_does_not_flap(stack: Stack, node: str) -> None:
    """latency with jitter on node<->manager: tasks complete and the node never goes offline"""
    assert stack.toxics is not None and stack._http is not None
    ws = await stack._http.ws_connect(stack.manager_url + Api.EVENTS,
                                      headers={"Authorization": f"Bearer {stack.control_token}"})
    try:
        link = stack.manager_link(node)
        async with stack.toxics.latency(link, 300, 200), stack.toxics.latency(link, 300, 200, stream="upstream"):
            results = await asyncio.gather(*(dispatch(stack, node, f"jittery {i}") for i in range(2)))
            assert all(r["ok"] for r in results), results
            # The subject: jitter held for two more heartbeat intervals, so a flap would show.
            await asyncio.sleep(2 * stack.node_settings[node]["heartbeat_interval"])
        offline = await offline_events(ws, node)
    finally:
        await ws.close()
    assert not offline, f"node flapped offline under jitter: {offline}"
    assert node in (await stack.call(Api.SERVERS))["online"]


@pytest.mark.case("A2-10")
async def test_approval_timeout(stack: Stack, impatient_node: str) -> None:
    """nobody answers an approval: codex is told decline, the task fails as approval_timeout"""
    result = await dispatch(stack, impatient_node, "run something [[mock:approve]]")
    assert result["ok"] is False and result["error_kind"] == "approval_timeout", result
    assert "rejected" in result["text"], "codex should have been told the command was declined"
    approvals = (await stack.call(Api.APPROVALS))["approvals"]
    mine = [a for a in approvals if a.get("task_id") == result["task_id"]]
    assert [a["state"] for a in mine] == ["expired"]


@pytest.mark.case("A2-11")
async def test_appserver_crash(stack: Stack, node: str) -> None:
    """killing the codex child fails the turn as appserver_crash (retriable); the next task works"""
    prompt = f"crash me {new_id('p')}"
    turn = asyncio.create_task(dispatch(stack, node, f"{prompt} [[mock:slow=3]]"))
    await stack.wait_served(prompt)  # codex is mid-turn, waiting on the model
    [codex] = stack.procs[node].children_named("codex")
    codex.kill()
    result = await turn
    assert result["ok"] is False and result["error_kind"] == "appserver_crash" and result["retriable"] is True, result
    after = await dispatch(stack, node, "after the crash")
    assert after["ok"] and after["text"] == "mock reply: after the crash", after


@pytest.mark.case("A2-12")
async def test_upstream_disconnect(stack: Stack, node: str) -> None:
    """the mock drops the SSE stream: upstream_disconnect, retriable"""
    result = await dispatch(stack, node, "drop it [[mock:drop]]")
    assert result["ok"] is False and result["error_kind"] == "upstream_disconnect" and result["retriable"] is True, result


@pytest.mark.case("A2-13")
async def test_slow_call_does_not_block(stack: Stack, node: str) -> None:
    """a slow turn in flight: heartbeats and other app-server calls keep flowing"""
    async def last_seen() -> float:
        return float(next(s["last_seen"] for s in (await stack.call(Api.SERVERS))["servers"] if s["node_id"] == node))

    prompt = f"slow one {new_id('p')}"
    turn = asyncio.create_task(dispatch(stack, node, f"{prompt} [[mock:slow=2.5]]"))
    await stack.wait_served(prompt)
    listed = await stack.result(Api.APPSERVER, {"node_id": node, "method": "thread/list", "params": {}, "timeout": 5})
    assert listed["ok"] and not turn.done(), "the relayed call waited for the turn"
    seen_before = await last_seen()  # after the call: its own answer is a frame, and refreshes last_seen too
    # A heartbeat must land while the turn still runs: look for one for up to three intervals.
    async for _ in Backoff(0.05, factor=1).tries(3 * stack.node_settings[node]["heartbeat_interval"]):
        if await last_seen() > seen_before:
            break
    assert await last_seen() > seen_before, "heartbeats stopped while a turn was running"
    assert not turn.done()
    assert (await turn)["ok"]
