"""A1, hostile peers: the real manager with small send, close and register bounds, driven by scripted nodes,
raw sockets and the control API."""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from harness.ends.peers import ScriptedNode
from harness.stack.procs import log_fields
from harness.stack.stack import Stack
from runtime.protocol import (CLOSE_PROTOCOL, CLOSE_UNAUTHORIZED, MAX_BODY_BYTES, MAX_FRAME_BYTES, NODE_AUTH_HEADER, Api,
                              Msg, bearer, message, new_id)

# Bounds small enough to be crossed within a case: a frame may take 2 s to leave and 2 MiB may wait for one peer (a
# 900 KB prompt fits, three do not), a close 0.5 s, a registration 1 s; 8 sockets may be registering at once.
# Scripted nodes send no heartbeats, so the offline timeout outlasts every case; a task nobody answers for (a
# dispatch cut short by a shutdown) fails half a second past its deadline.
SEND_TIMEOUT, CLOSE_TIMEOUT, REGISTER_TIMEOUT, MAX_UNREGISTERED = 2.0, 0.5, 1.0, 8
PREAUTH_FRAME_BYTES = 8192  # the manager's default: what a socket may send before it has proved a token
MAX_CONNECTING = 64  # sockets that have sent no request head yet, at once: above the 18 calls H-01 opens at once
STACK_MANAGER_ARGS = {"send-timeout": SEND_TIMEOUT, "send-budget": 2 << 20, "close-timeout": CLOSE_TIMEOUT,
                      "register-timeout": REGISTER_TIMEOUT, "max-unregistered": MAX_UNREGISTERED,
                      "header-timeout": REGISTER_TIMEOUT, "max-connecting": MAX_CONNECTING,
                      "heartbeat-interval": 1.0, "offline-timeout": 60.0, "result-grace": 0.5, "sweep-interval": 0.25}
BIG_PROMPT = 900_000  # under one frame, and more than the kernel's buffers take in a few of them
# Every character str.splitlines() breaks a line on.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


async def registered(stack: Stack, node: ScriptedNode, token: str | None = None) -> str:
    """Connect and register `node` with `token`, or with a token minted for its node_id; returns the token."""
    token = token or (await stack.call(Api.TOKENS, {"node_id": node.node_id}))["token"]
    await node.connect(token)
    assert (await node.register(token))["type"] == Msg.REGISTER_OK
    return str(token)


async def token_id_of(stack: Stack, node_id: str) -> str:
    return str(next(t["token_id"] for t in (await stack.call(Api.TOKENS, method="GET"))["tokens"]
                    if t["node_id"] == node_id and not t.get("revoked_at")))


async def dropped(stack: Stack) -> int:
    """Peers cut off for falling behind, by bytes or by time."""
    return await stack.metric("peers_dropped_send_budget") + await stack.metric("peers_dropped_send_timeout")


async def wait_gauge(stack: Stack, series: str, value: float, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while (now := await stack.gauge(series)) != value:
        assert time.monotonic() < deadline, f"{series} is {now}, not {value}, after {timeout}s"
        await asyncio.sleep(0.05)


def big_dispatch(stack: Stack, node: ScriptedNode, n: int, timeout: float) -> asyncio.Task[tuple[int, dict[str, Any]]]:
    """A prompt of BIG_PROMPT bytes, unrecorded: the case's record needs no megabytes of x."""
    body = {"node_id": node.node_id, "prompt": f"{n} " + "x" * BIG_PROMPT, "timeout": timeout}
    # The client's own timeout: a manager that waits on the socket fails the case, not the whole session.
    return asyncio.create_task(stack.request("POST", Api.DISPATCH, body, timeout=timeout + 5, record=False))


async def subscribe(stack: Stack, http: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(stack.manager_url + Api.EVENTS,
                               headers={"Authorization": f"Bearer {stack.control_token}"}, max_msg_size=0)
    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "hello"
    return ws


async def raw_http(stack: Stack, request: bytes) -> tuple[int, dict[str, Any]]:
    """One HTTP/1.1 exchange over a bare socket: for bytes aiohttp's client will not send (a non-UTF-8 header)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.manager_port)
    try:
        writer.write(request)
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def control_request(stack: Stack, method: str, path: str, body: bytes = b"", headers: bytes = b"") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Authorization: Bearer {stack.control_token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n").encode() + headers + b"\r\n" + body


@pytest.mark.case("H-01")
async def test_node_that_stops_reading(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """a node that stops reading with large prompts queued: dropped past the bound; nothing else waits on it"""
    stuck, revoked, other = peer(), peer(), peer()
    for node in (stuck, revoked, other):
        await registered(stack, node)
    stuck.stop_reading()
    revoked.stop_reading()
    manager = stack.procs["manager"]
    seen, dropped_before = len(manager.log_lines("peer_dropped")), await dropped(stack)
    timeout = 1.5
    started = time.monotonic()
    # 14 MB for one, past the kernel's buffers (loopback's grow to several MB) and its budget; 1.8 MB for the
    # other, within its budget: that one is still connected when revoked.
    calls = [big_dispatch(stack, stuck, i, timeout) for i in range(16)]
    calls += [big_dispatch(stack, revoked, i, timeout) for i in range(2)]

    # While those wait for sockets nobody reads: health, another node's call and revoke answer at once.
    status, _ = await stack.request("GET", Api.HEALTHZ, timeout=1.0)
    assert status == 200
    call = asyncio.create_task(stack.result(Api.APPSERVER, {"node_id": other.node_id, "method": "thread/list",
                                                            "params": {}, "timeout": 5}))
    req = await other.expect(Msg.APPSERVER_REQUEST, timeout=2)
    await other.send(message(Msg.APPSERVER_RESPONSE, request_id=req["request_id"], result={"ok": True, "result": {}}))
    assert (await call)["ok"]
    revoke_started = time.monotonic()
    revoked_result = await stack.call(Api.TOKENS_REVOKE, {"token_id": await token_id_of(stack, revoked.node_id)},
                                      timeout=CLOSE_TIMEOUT + 2)
    assert revoked_result["closed_sessions"] == [revoked.node_id]
    assert time.monotonic() - revoke_started < CLOSE_TIMEOUT + 2.0

    # Every dispatch to them fails within its own timeout, on the control plane's terms.
    for status, env in await asyncio.gather(*calls):
        assert status == 200 and env["ok"] and env["result"]["ok"] is False, env
        assert env["result"]["error_kind"] in ("timeout", "node_offline"), env
    # The margin covers sending 16 MB of bodies on a loaded 2-core machine; the defect held them for 12 s and more.
    assert time.monotonic() - started < timeout + 3.0
    line = await manager.wait_log("peer_dropped", timeout=SEND_TIMEOUT + 2, seen=seen)
    assert log_fields(line)["peer"] == "node" and log_fields(line)["reason"] in ("send_budget", "send_timeout"), line
    assert await dropped(stack) > dropped_before
    await stack.wait_online(stuck.node_id, online=False, timeout=SEND_TIMEOUT + 2)
    assert other.node_id in (await stack.call(Api.SERVERS))["online"]

    # A shutdown with a socket wedged like that ends within a few seconds, cleanly.
    wedged = peer()
    await registered(stack, wedged)
    wedged.stop_reading()
    calls = [big_dispatch(stack, wedged, i, 1.0) for i in range(8)]
    await asyncio.sleep(0.3)  # the prompts reach the manager and pile up in front of the socket
    proc = manager.popen
    assert proc is not None
    stopping = time.monotonic()
    await asyncio.to_thread(manager.terminate, 15.0)
    assert time.monotonic() - stopping < 6.0 and proc.returncode == 0, (time.monotonic() - stopping, proc.returncode)
    await asyncio.gather(*calls, return_exceptions=True)
    await stack.start_manager()


@pytest.mark.case("H-02")
async def test_event_subscriber_that_stops_reading(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """an event subscriber that never reads is dropped past the byte budget; a closed one is forgotten at once"""
    node = peer()
    await registered(stack, node)
    manager = stack.procs["manager"]
    async with aiohttp.ClientSession() as http:
        slow, healthy = await subscribe(stack, http), await subscribe(stack, http)
        heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def listen() -> None:
            async for frame in healthy:
                await heard.put(json.loads(frame.data))
        listening = asyncio.create_task(listen())
        subscribers = await stack.gauge("relay_event_subscribers")
        seen, budget_before = len(manager.log_lines("peer_dropped")), await stack.metric("peers_dropped_send_budget")
        call = asyncio.create_task(stack.result(Api.DISPATCH, {"node_id": node.node_id, "prompt": "h02", "timeout": 10}))
        assign = await node.expect(Msg.TASK_ASSIGN)
        for i in range(30):  # 12 MB of progress: past the kernel's buffers and the 2 MiB budget
            await node.send(message(Msg.TASK_PROGRESS, task_id=assign["task_id"], text=f"{i} " + "p" * 400_000))
            # Paced by the subscriber that reads: it keeps up by construction, so only the other one falls behind.
            async with asyncio.timeout(10):
                while not ((event := await heard.get())["type"] == "task_progress" and event["text"].startswith(f"{i} ")):
                    pass
        line = await manager.wait_log("peer_dropped", seen=seen)
        assert log_fields(line)["peer"] == "subscriber" and log_fields(line)["reason"] == "send_budget", line
        assert await stack.metric("peers_dropped_send_budget") == budget_before + 1
        await wait_gauge(stack, "relay_event_subscribers", subscribers - 1)
        await node.send(message(Msg.TASK_RESULT, task_id=assign["task_id"], result={"ok": True, "text": "done"}))
        assert (await call)["ok"]
        # The subscriber that reads got everything, to the task's result.
        async with asyncio.timeout(10):
            while (event := await heard.get())["type"] != "task_result":
                pass
        assert event["task_id"] == assign["task_id"]
        listening.cancel()

        # A subscriber that disconnects is forgotten without waiting for the next event.
        extra = await subscribe(stack, http)
        await wait_gauge(stack, "relay_event_subscribers", subscribers)
        await extra.close()
        await wait_gauge(stack, "relay_event_subscribers", subscribers - 1, timeout=2.0)
        await slow.close()
        await healthy.close()


@pytest.mark.case("H-03")
async def test_fleet_token_cannot_take_over(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """a token minted without node_id brings up new nodes but cannot take over one registered with another token"""
    fleet = (await stack.call(Api.TOKENS, {"note": "fleet"}))["token"]
    owner = peer()
    await registered(stack, owner)
    thief = await peer(owner.node_id).connect()
    reply = await thief.register(fleet)
    assert reply["type"] == Msg.REGISTER_ERROR and reply["error_kind"] == "unauthorized", reply
    assert owner.node_id in reply["error"]
    assert await thief.closed() == CLOSE_UNAUTHORIZED
    # The live session was not evicted: it is still online and answered.
    await owner.send(message(Msg.HEARTBEAT, node_id=owner.node_id))
    await owner.expect(Msg.HEARTBEAT_ACK)
    assert owner.node_id in (await stack.call(Api.SERVERS))["online"]

    # The fleet token brings up a new node; another fleet token cannot take that one over either.
    fresh = peer()
    await registered(stack, fresh, fleet)
    other_fleet = (await stack.call(Api.TOKENS, {"note": "another fleet"}))["token"]
    thief2 = await peer(fresh.node_id).connect()
    assert (await thief2.register(other_fleet))["type"] == Msg.REGISTER_ERROR
    await fresh.send(message(Msg.HEARTBEAT, node_id=fresh.node_id))
    await fresh.expect(Msg.HEARTBEAT_ACK)


@pytest.mark.case("H-04")
async def test_node_speaks_for_another_nodes_work(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """another node's task, call and approval: each foreign message gets an error reply, nothing changes"""
    owner, intruder = peer(), peer()
    await registered(stack, owner)
    await registered(stack, intruder)
    call = asyncio.create_task(stack.result(Api.DISPATCH, {"node_id": owner.node_id, "prompt": "h04", "timeout": 10}))
    task_id = (await owner.expect(Msg.TASK_ASSIGN))["task_id"]
    rpc = asyncio.create_task(stack.result(Api.APPSERVER, {"node_id": owner.node_id, "method": "thread/list",
                                                           "params": {}, "timeout": 10}))
    request_id = (await owner.expect(Msg.APPSERVER_REQUEST))["request_id"]
    approval_id = new_id("appr")
    await owner.send(message(Msg.APPROVAL_REQUEST, approval_id=approval_id, kind="command", command="ls",
                             task_id=task_id))
    await owner.send(message(Msg.HEARTBEAT, node_id=owner.node_id))
    await owner.expect(Msg.HEARTBEAT_ACK)  # frames are handled in order: the approval is stored
    task_before = (await stack.call(Api.TASKS, {"task_id": task_id}))["task"]
    foreign_before = await stack.metric("foreign_messages")

    forged = [message(Msg.TASK_ACK, task_id=task_id, state="queued"),
              message(Msg.TASK_PROGRESS, task_id=task_id, text="forged"),
              message(Msg.TASK_RESULT, task_id=task_id, result={"ok": True, "text": "forged"}),
              message(Msg.TASK_STATE, task_id=task_id, state="done"),
              message(Msg.APPSERVER_RESPONSE, request_id=request_id, result={"ok": True, "result": {"forged": 1}}),
              message(Msg.APPROVAL_EXPIRED, approval_id=approval_id),
              message(Msg.APPROVAL_REQUEST, approval_id=new_id("appr"), kind="command", command="rm -rf /",
                      task_id=task_id)]
    for msg in forged:
        await intruder.send(msg)
        reply = await intruder.expect(Msg.ERROR, timeout=5)
        assert reply["error_kind"] == "invalid_request" and intruder.node_id in reply["error"] or \
            "another node" in reply["error"], (msg["type"], reply)
    assert await stack.metric("foreign_messages") == foreign_before + len(forged)
    assert len([ln for ln in stack.procs["manager"].log_lines("bad_frame")
                if log_fields(ln).get("node_id") == intruder.node_id]) >= len(forged)

    assert (await stack.call(Api.TASKS, {"task_id": task_id}))["task"] == task_before
    pending = (await stack.call(Api.APPROVALS, {"state": "pending"}))["approvals"]
    assert [a["command"] for a in pending if a.get("task_id") == task_id] == ["ls"], pending
    assert not call.done() and not rpc.done()
    # The owner's own answers still land.
    await owner.send(message(Msg.APPSERVER_RESPONSE, request_id=request_id, result={"ok": True, "result": {"mine": 1}}))
    assert (await rpc)["result"] == {"mine": 1}
    assert (await stack.call(Api.APPROVALS_DECIDE, {"approval_id": approval_id, "decision": "accept"}))["delivered"]
    assert (await owner.expect(Msg.APPROVAL_DECISION))["approval_id"] == approval_id
    await owner.send(message(Msg.TASK_RESULT, task_id=task_id, result={"ok": True, "text": "mine"}))
    assert (await call)["text"] == "mine"


@pytest.mark.case("H-05")
async def test_malformed_node_messages(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """a field missing or of the wrong type: an error reply naming the field, the session stays up, no traceback"""
    node = peer()
    await registered(stack, node)
    manager = stack.procs["manager"]
    errors_before = len([ln for ln in manager.log_lines() if "level=error" in ln])
    bad: list[tuple[dict[str, Any], str]] = [
        ({"type": "task_result", "task_id": "t1", "result": "done"}, "result"),
        ({"type": "task_result", "task_id": "t1", "result": {"ok": "yes"}}, "ok"),
        ({"type": "task_result", "result": {"ok": True}}, "task_id"),
        ({"type": "task_ack", "task_id": 7}, "task_id"),
        ({"type": "task_progress", "task_id": ["t1"], "text": "x"}, "task_id"),
        ({"type": "task_progress", "task_id": "t1", "text": {"a": 1}}, "text"),
        ({"type": "task_state", "task_id": "t1", "state": 3}, "state"),
        ({"type": "appserver_response", "request_id": "r1"}, "result"),
        ({"type": "appserver_response", "request_id": None, "result": {"ok": True}}, "request_id"),
        ({"type": "approval_request", "kind": "command", "command": "ls"}, "approval_id"),
        ({"type": "approval_request", "approval_id": "a1"}, "kind"),
        ({"type": "approval_expired", "approval_id": 1.5}, "approval_id"),
        ({"type": "heartbeat", "node_id": node.node_id, "ts": "now"}, "ts"),
    ]
    for frame, field in bad:
        await node.send_raw(json.dumps(frame))
        reply = await node.expect(Msg.ERROR, timeout=5)
        assert f"`{field}`" in reply["error"] or f"$.{field}" in reply["error"] or f".{field}`" in reply["error"], \
            (frame, reply)
    await node.send(message(Msg.HEARTBEAT, node_id=node.node_id))
    await node.expect(Msg.HEARTBEAT_ACK)
    assert node.node_id in (await stack.call(Api.SERVERS))["online"]
    text = manager.log_text()
    assert "Traceback" not in text
    assert len([ln for ln in manager.log_lines() if "level=error" in ln]) == errors_before


@pytest.mark.case("H-06")
async def test_sockets_that_never_register(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """pinging sockets closed at the register timeout; the unregistered cap answers 503 busy; an early frame is refused"""
    async with aiohttp.ClientSession() as http:
        url = stack.manager_url.replace("http://", "ws://") + Api.NODE_WS
        # Pings every 0.2 s do not extend the one register deadline.
        pinger = await http.ws_connect(url, autoping=True, heartbeat=0.2)
        opened = time.monotonic()
        try:
            async with asyncio.timeout(REGISTER_TIMEOUT + 3):
                while (msg := await pinger.receive()).type == aiohttp.WSMsgType.TEXT:  # the register_error says why
                    assert json.loads(msg.data)["type"] == Msg.REGISTER_ERROR
        except TimeoutError:
            pytest.fail(f"a socket that pings was held past {REGISTER_TIMEOUT + 3}s without registering")
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        assert time.monotonic() - opened < REGISTER_TIMEOUT + 1.0

        # At most MAX_UNREGISTERED at once; the next gets HTTP 503 `busy`, and a slot frees at the deadline.
        busy_before = await stack.metric("registrations_busy")
        idle = [await http.ws_connect(url) for _ in range(MAX_UNREGISTERED)]
        async with http.get(url, headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                                          "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
                            timeout=aiohttp.ClientTimeout(total=5)) as resp:
            body = await resp.json()
            assert resp.status == 503 and body["ok"] is False and body["error_kind"] == "busy", (resp.status, body)
        assert await stack.metric("registrations_busy") == busy_before + 1
        for ws in idle:
            await ws.close()

        # A frame before registration is refused and closed; the log does not copy it.
        manager = stack.procs["manager"]
        seen = len(manager.log_lines("register_refused"))
        early = await http.ws_connect(url)
        junk = "Z" * (PREAUTH_FRAME_BYTES - 100)
        await early.send_str(json.dumps({"type": junk}))
        reply = await early.receive(timeout=5)
        assert reply.type == aiohttp.WSMsgType.TEXT and json.loads(reply.data)["type"] == Msg.REGISTER_ERROR
        closing = await early.receive(timeout=5)
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == CLOSE_PROTOCOL, closing
        line = await manager.wait_log("register_refused", seen=seen)
        assert len(line) < 4000 and "Z" * 2001 not in line, len(line)
        # Before registering, a socket whose upgrade request carried no valid token may send a few KB: a larger
        # frame is closed on its header (1009), unread. A wrong token in the header buys nothing more.
        for headers in (None, {NODE_AUTH_HEADER: bearer("crt_not-a-real-token")}):
            seen = len(manager.log_lines("register_refused"))
            big = await http.ws_connect(url, headers=headers)
            await _send_ignoring_reset(big, json.dumps({"type": "Z" * (PREAUTH_FRAME_BYTES + 1)}))
            await _closed_too_big(big)
            line = await manager.wait_log("register_refused", seen=seen)
            assert "error_kind=too_large" in line and "Z" * 100 not in line, line
        # With a valid token on the upgrade request (as the real node sends it), frames up to one frame's limit pass
        # once registered; past that limit the manager closes on the frame's header too.
        authed = peer()
        token = (await stack.call(Api.TOKENS, {"node_id": authed.node_id}))["token"]
        await authed.connect(token)
        assert (await authed.register(token))["type"] == Msg.REGISTER_OK
        await authed.send(message(Msg.ERROR, error="x" * (PREAUTH_FRAME_BYTES * 8), error_kind="internal",
                                  retriable=False))
        await authed.send(message(Msg.HEARTBEAT, node_id=authed.node_id))
        await authed.expect(Msg.HEARTBEAT_ACK)
        huge = await http.ws_connect(url, headers={NODE_AUTH_HEADER: bearer(token)})
        await _send_ignoring_reset(huge, "Z" * (MAX_FRAME_BYTES + 1))
        await _closed_too_big(huge)
    # A registration still works after all that.
    await registered(stack, peer())


async def _send_ignoring_reset(ws: aiohttp.ClientWebSocketResponse, data: str) -> None:
    try:
        await ws.send_str(data)
    except ConnectionError:
        pass  # the manager may close before the frame has left


async def _closed_too_big(ws: aiohttp.ClientWebSocketResponse) -> None:
    closing = await ws.receive(timeout=5)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), closing
    assert aiohttp.WSCloseCode.MESSAGE_TOO_BIG in (ws.close_code, closing.data), (ws.close_code, closing)


async def _server_closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except ConnectionResetError:
        return True  # aborted: the manager spends nothing more on it
    except TimeoutError:
        return False


@pytest.mark.case("H-06")
async def test_idle_and_trickling_connections(stack: Stack) -> None:
    """an idle TCP connection and one that sends its headers byte by byte are closed at a header timeout"""
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", stack.manager_port)
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", stack.manager_port)
    request = f"GET {Api.NODE_WS} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    try:
        async def trickle() -> None:
            for i in range(len(request)):
                slow_writer.write(request[i:i + 1])
                await asyncio.sleep(0.1)
        trickling = asyncio.create_task(trickle())
        within = REGISTER_TIMEOUT * 3
        idle_closed, slow_closed = await asyncio.gather(_server_closed(idle_reader, within),
                                                        _server_closed(slow_reader, within))
        trickling.cancel()
        assert idle_closed and slow_closed, f"held past {within}s: idle={not idle_closed} trickling={not slow_closed}"
        # Past max_connecting sockets that have sent no request head, the next is closed on arrival.
        held = [await asyncio.open_connection("127.0.0.1", stack.manager_port) for _ in range(MAX_CONNECTING)]
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", stack.manager_port)
        assert await _server_closed(extra_reader, 1.0), "a connection past max_connecting was held"
        assert await stack.metric("connections_refused_busy") >= 1
        for _, writer in [*held, (extra_reader, extra_writer)]:
            writer.close()
    finally:
        idle_writer.close()
        slow_writer.close()


@pytest.mark.case("H-07")
async def test_hostile_control_input(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """oversized bodies, non-UTF-8 headers, huge integers, Unicode digits, bad timeouts: a 4xx naming the field"""
    node = peer()
    await registered(stack, node)
    failures_before = await stack.metric("control_internal")

    status, env = await raw_http(stack, control_request(stack, "POST", Api.DISPATCH,
                                                        b'{"node_id":"n","prompt":"' + b"x" * MAX_BODY_BYTES + b'"}'))
    assert (status, env["ok"], env["error_kind"]) == (413, False, "too_large") and str(MAX_BODY_BYTES) in env["error"], env

    # A trace id that is not UTF-8: answered normally, and the call it rode on leaves no waiter behind.
    status, env = await raw_http(stack, control_request(stack, "GET", Api.SERVERS,
                                                        headers=b"X-Trace-Id: tr\xff\xfe\xc3\r\n"))
    assert status == 200 and env["ok"], env
    body = json.dumps({"node_id": node.node_id, "method": "thread/list", "params": {}, "timeout": 5}).encode()
    answer = asyncio.create_task(raw_http(stack, control_request(stack, "POST", Api.APPSERVER, body,
                                                                 headers=b"X-Trace-Id: \x80\x81\r\n")))
    req = await node.expect(Msg.APPSERVER_REQUEST)
    await node.send(message(Msg.APPSERVER_RESPONSE, request_id=req["request_id"], result={"ok": True, "result": {}}))
    status, env = await answer
    assert status == 200 and env["ok"] and env["result"]["ok"], env
    await wait_gauge(stack, 'relay_waiters{kind="rpc"}', 0)
    await wait_gauge(stack, 'relay_waiters{kind="task"}', 0)

    bad: list[tuple[str, Api, dict[str, Any] | bytes, str]] = [
        ("POST", Api.USERS, {"user_id": 2**63}, "user_id"),
        ("POST", Api.USERS, {"user_id": 2**64 + 1}, "user_id"),
        ("POST", Api.USERS, {"user_id": 10**40}, "user_id"),
        ("POST", Api.USERS, {"user_id": "1"}, "user_id"),
        ("GET", Api.SERVERS, {"limit": "²"}, "limit"),
        ("GET", Api.SERVERS, {"limit": "١٢"}, "limit"),
        ("POST", Api.DISPATCH, {"node_id": node.node_id, "prompt": "x", "timeout": 0}, "timeout"),
        ("POST", Api.DISPATCH, {"node_id": node.node_id, "prompt": "x", "timeout": -1}, "timeout"),
        ("POST", Api.DISPATCH, {"node_id": node.node_id, "prompt": "x", "timeout": "NaN"}, "timeout"),
        ("POST", Api.APPSERVER, {"node_id": node.node_id, "method": "m", "timeout": "Infinity"}, "timeout"),
        ("POST", Api.APPSERVER, f'{{"node_id":"{node.node_id}","method":"m","timeout":1e999}}'.encode(), "timeout"),
        ("POST", Api.DISPATCH_TEXT, {"chat_key": "c", "text": "x", "timeout": 10**30}, "timeout"),
    ]
    for method, path, payload, field in bad:
        if isinstance(payload, bytes):
            status, env = await raw_http(stack, control_request(stack, method, path, payload))
        elif method == "GET":
            status, env = await raw_http(stack, control_request(stack, method, f"{path}?{urlencode(payload)}"))
        else:
            status, env = await stack.request(method, path, payload)
        assert status == 400 and env["ok"] is False and env["error_kind"] == "invalid_request", (payload, status, env)
        assert f"`{field}`" in env["error"], (payload, env)
    # A literal NaN is not JSON at all: still a 400, never a 5xx.
    status, env = await raw_http(stack, control_request(stack, "POST", Api.DISPATCH,
                                                        f'{{"node_id":"{node.node_id}","prompt":"x","timeout":NaN}}'.encode()))
    assert status == 400 and env["error_kind"] == "invalid_request", env
    assert await stack.metric("control_internal") == failures_before
    assert "Traceback" not in stack.procs["manager"].log_text()


@pytest.mark.case("H-08")
async def test_prompt_over_one_frame(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """a prompt within the body limit but over one frame: 413 too_large naming the limit; the node stays up"""
    node = peer()
    await registered(stack, node)
    counts_before = (await stack.call(Api.TASKS, record=False))["counts"]
    envelope = json.dumps({"node_id": node.node_id, "prompt": ""})
    prompt = "x" * (MAX_BODY_BYTES - len(envelope) - 64)  # the body fits; the task_assign frame around it does not
    body = json.dumps({"node_id": node.node_id, "prompt": prompt})
    assert len(body) < MAX_BODY_BYTES
    status, env = await stack.request("POST", Api.DISPATCH, {"node_id": node.node_id, "prompt": prompt, "timeout": 2},
                                      timeout=10, record=False)
    assert (status, env["ok"], env["error_kind"]) == (413, False, "too_large") and str(MAX_FRAME_BYTES) in env["error"], \
        (status, {k: v for k, v in env.items() if k != "result"})
    status, env = await stack.request("POST", Api.APPSERVER, {"node_id": node.node_id, "method": "thread/start",
                                                              "params": {"input": prompt}, "timeout": 2},
                                      timeout=10, record=False)
    assert (status, env["ok"], env["error_kind"]) == (413, False, "too_large") and str(MAX_FRAME_BYTES) in env["error"]
    assert (await stack.call(Api.TASKS, record=False))["counts"] == counts_before  # nothing half-created

    # The node never saw those, is still connected, and its other calls work.
    call = asyncio.create_task(stack.result(Api.APPSERVER, {"node_id": node.node_id, "method": "thread/list", "params": {}}))
    req = await node.expect(Msg.APPSERVER_REQUEST)
    assert req["method"] == "thread/list"
    await node.send(message(Msg.APPSERVER_RESPONSE, request_id=req["request_id"], result={"ok": True, "result": {"n": 1}}))
    assert (await call)["result"] == {"n": 1}
    assert node.node_id in (await stack.call(Api.SERVERS))["online"]
    assert node.inbox.empty()


@pytest.mark.case("H-09")
async def test_line_breaks_cannot_forge_log_lines(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """ids and texts with CR, U+0085, U+2028 and other line breaks are logged escaped; no line is forged"""
    node = peer()
    await registered(stack, node)
    manager = stack.procs["manager"]
    forged_id = new_id("forged")

    def forge(sep: str) -> str:
        return f"x{sep}ts=2026-01-01T00:00:00.000Z level=info logger=codex_manager op=task_final task_id={forged_id} ok=True"

    for sep in LINE_BREAKS:
        await node.send(message(Msg.TASK_RESULT, task_id=forge(sep), result={"ok": True}))  # an orphan, logged
        await node.send(message(Msg.ERROR, error=forge(sep), error_kind="invalid_request"))  # logged as the node's
        approval_id = forge(sep)
        await node.send(message(Msg.APPROVAL_REQUEST, approval_id=approval_id, kind="command", command=forge(sep)))
    # A task whose id is itself a forgery, dispatched with a trace id that holds a fake `op=` field.
    trace = f"t op=task_final task_id={forged_id} ok=True"
    call = asyncio.create_task(stack.request("POST", Api.DISPATCH, {"node_id": node.node_id, "prompt": forge("\u2028"),
                                                                   "task_id": forge("\u2028"), "timeout": 10}))
    assign = await node.expect(Msg.TASK_ASSIGN)
    await node.send(message(Msg.TASK_RESULT, task_id=assign["task_id"], result={"ok": True, "text": forge("\r")}))
    status, env = await call
    assert status == 200 and env["result"]["ok"], env
    status, env = await raw_http(stack, control_request(stack, "GET", Api.SERVERS,
                                                        headers=f"X-Trace-Id: {trace}\r\n".encode()))
    assert status == 200, env
    status, env = await raw_http(stack, control_request(stack, "GET", Api.SERVERS,
                                                        headers=f"X-Trace-Id: a\u2028{trace}\r\n".encode()))
    assert status == 200, env
    await node.send(message(Msg.HEARTBEAT, node_id=node.node_id))
    await node.expect(Msg.HEARTBEAT_ACK)  # every frame above was handled
    for approval in (await stack.call(Api.APPROVALS, {"state": "pending"}))["approvals"]:
        if forged_id in approval["approval_id"]:
            await stack.call(Api.APPROVALS_DECIDE, {"approval_id": approval["approval_id"], "decision": "decline"})

    text = manager.log_text()
    assert forged_id in text  # the values were logged: the checks below are about how
    lines = manager.log_lines()
    assert all(ln.startswith(("ts=", "# harness:")) for ln in lines), [ln for ln in lines if not ln.startswith("ts=")][:3]
    assert not [c for c in LINE_BREAKS if c in text.replace("\n", "")], "a raw line break inside a logged value"
    for sep in LINE_BREAKS:
        escaped = {"\n": "\\n", "\r": "\\r"}.get(sep, f"\\u{ord(sep):04x}")
        assert f"x{escaped}ts=" in text, escaped
    # The harness's evidence: only a line whose own `op` is task_final counts, and its own task_id.
    finals = [log_fields(ln).get("task_id") for ln in manager.log_lines("task_final")]
    assert forged_id not in finals and assign["task_id"] in finals, finals
