"""A1: the real manager process, driven over its WebSocket and HTTP interfaces by a scripted node."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp
import pytest

from harness.ends.peers import ScriptedNode
from harness.faults.sqlite_lock import db_locked
from harness.stack.stack import Stack
from runtime.backoff import Backoff
from runtime.protocol import (
    CLOSE_PROTOCOL,
    CLOSE_REPLACED,
    CLOSE_REVOKED,
    CLOSE_UNAUTHORIZED,
    MAX_FRAME_BYTES,
    MIN_NODE_PROTOCOL,
    PROTOCOL_VERSION,
    READINESS_PROTOCOL,
    Api,
    Msg,
    message,
    new_id,
)

# Short DB waits so a held lock surfaces as storage_error within the case, not after it. A1-10 waits out the
# offline timeout and A1-17 a sweep (the retry of a deferred result), so both are short too; scripted nodes
# send no heartbeats of their own, and no other case leaves one silent for 2 s.
STACK_MANAGER_ARGS = {"busy-timeout-ms": 300, "offline-timeout": 2.0, "heartbeat-interval": 1.0,
                      "sweep-interval": 0.25}


async def approval_pending(stack: Stack, approval_id: str) -> None:
    """Wait (bounded) until the manager lists the approval as pending: it stores a request as it arrives."""
    async for _ in Backoff(0.05, factor=1).tries(5):
        pending = (await stack.call(Api.APPROVALS, {"state": "pending"}))["approvals"]
        if any(a["approval_id"] == approval_id for a in pending):
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"approval {approval_id} never listed as pending")


async def registered(stack: Stack, node: ScriptedNode) -> str:
    token = (await stack.call(Api.TOKENS, {"node_id": node.node_id}))["token"]
    await node.connect(token)
    assert (await node.register(token))["type"] == Msg.REGISTER_OK
    return str(token)


@pytest.mark.case("A1-01")
async def test_register_without_token(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """register with no token is refused and the node is not online"""
    node = await peer().connect()
    reply = await node.register(None)
    assert reply["type"] == Msg.REGISTER_ERROR and reply["error_kind"] == "unauthorized"
    assert await node.closed() == CLOSE_UNAUTHORIZED
    assert node.node_id not in (await stack.call(Api.SERVERS))["online"]


@pytest.mark.case("A1-02")
async def test_register_with_wrong_token(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """register with a wrong token is refused"""
    node = await peer().connect()
    reply = await node.register("crt_not-a-real-token")
    assert reply["type"] == Msg.REGISTER_ERROR and "unknown or revoked" in reply["error"]
    assert await node.closed() == CLOSE_UNAUTHORIZED
    assert node.node_id not in (await stack.call(Api.SERVERS))["online"]


@pytest.mark.case("A1-03")
async def test_register_with_valid_token(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """register with a valid token: online and in the servers list"""
    node = peer()
    await registered(stack, node)
    servers = await stack.call(Api.SERVERS)
    assert node.node_id in servers["online"]
    assert any(s["node_id"] == node.node_id and s["online"] for s in servers["servers"])


@pytest.mark.case("A1-04")
async def test_revoked_token(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """revoking a token closes its live session, and reconnecting with it is refused"""
    node = peer()
    token = await registered(stack, node)
    token_id = next(t["token_id"] for t in (await stack.call(Api.TOKENS, method="GET"))["tokens"]
                    if t["node_id"] == node.node_id)
    revoked = await stack.call(Api.TOKENS_REVOKE, {"token_id": token_id})
    assert revoked["closed_sessions"] == [node.node_id]
    assert await node.closed() == CLOSE_REVOKED
    again = await peer(node.node_id).connect()
    assert (await again.register(token))["type"] == Msg.REGISTER_ERROR
    await stack.wait_online(node.node_id, online=False)


@pytest.mark.case("A1-05")
async def test_appserver_thread_list_relayed(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """app-server thread/list is relayed to the node and its result returned"""
    node = peer()
    await registered(stack, node)
    call = asyncio.create_task(stack.result(Api.APPSERVER, {"node_id": node.node_id, "method": "thread/list", "params": {}}))
    req = await node.expect(Msg.APPSERVER_REQUEST)
    assert req["method"] == "thread/list" and req["params"] == {}
    await node.send(message(Msg.APPSERVER_RESPONSE, request_id=req["request_id"],
                            result={"ok": True, "result": {"data": [{"id": "t1"}], "nextCursor": None}}))
    result = await call
    assert result["ok"] and result["result"]["data"] == [{"id": "t1"}], result


@pytest.mark.case("A1-06")
async def test_thread_read_without_thread_id(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """thread/read without threadId: outer ok=true, inner failure passed through"""
    node = peer()
    await registered(stack, node)
    call = asyncio.create_task(stack.request("POST", Api.APPSERVER, {"node_id": node.node_id,
                                                                     "method": "thread/read", "params": {}}))
    req = await node.expect(Msg.APPSERVER_REQUEST)
    err = "-32600: Invalid request: missing field `threadId`"
    await node.send(message(Msg.APPSERVER_RESPONSE, request_id=req["request_id"],
                            result={"ok": False, "error": err, "error_kind": "appserver_error", "retriable": False}))
    status, env = await call
    assert status == 200 and env["ok"] is True
    assert env["result"]["ok"] is False and env["result"]["error_kind"] == "appserver_error"
    assert "threadId" in env["result"]["error"]


@pytest.mark.case("A1-07")
async def test_dispatch_chain_closes(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """dispatch: the node's result comes back, and so does the node's error"""
    node = peer()
    await registered(stack, node)
    for ok in (True, False):
        call = asyncio.create_task(stack.result(Api.DISPATCH, {"node_id": node.node_id, "prompt": "hi", "timeout": 10}))
        assign = await node.expect(Msg.TASK_ASSIGN)
        await node.send(message(Msg.TASK_ACK, task_id=assign["task_id"], state="queued"))
        body = {"ok": True, "text": "hello"} if ok else {"ok": False, "error": "boom", "error_kind": "appserver_error",
                                                         "retriable": False}
        await node.send(message(Msg.TASK_RESULT, task_id=assign["task_id"], result=body))
        result = await call
        assert result["ok"] is ok and result["task_id"] == assign["task_id"], result
        assert result.get("text") == "hello" if ok else result["error_kind"] == "appserver_error"
        task = (await stack.call(Api.TASKS, {"task_id": assign["task_id"]}))["task"]
        assert task["state"] == ("done" if ok else "failed")


@pytest.mark.case("A1-08")
async def test_dispatch_timeout(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """dispatch timeout: outer ok=true, result.ok=false, error_kind=timeout, task failed once"""
    node = peer()
    await registered(stack, node)
    status, env = await stack.request("POST", Api.DISPATCH, {"node_id": node.node_id, "prompt": "x", "timeout": 0.5})
    assert status == 200 and env["ok"] is True
    assert env["result"]["ok"] is False and env["result"]["error_kind"] == "timeout" and env["result"]["retriable"]
    assign = await node.expect(Msg.TASK_ASSIGN)
    assert (await node.expect(Msg.TASK_CANCEL))["task_id"] == assign["task_id"]
    task = (await stack.call(Api.TASKS, {"task_id": assign["task_id"]}))["task"]
    assert task["state"] == "failed" and task["error_kind"] == "timeout"


@pytest.mark.case("A1-09")
async def test_same_node_reconnects(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """the same node_id reconnecting appears once in the online list"""
    first = peer()
    token = await registered(stack, first)
    await first.close()
    for _ in range(3):
        again = await peer(first.node_id).connect()
        assert (await again.register(token))["type"] == Msg.REGISTER_OK
        await again.close()
    last = await peer(first.node_id).connect()
    await last.register(token)
    online = (await stack.call(Api.SERVERS))["online"]
    assert online.count(first.node_id) == 1


@pytest.mark.case("A1-10")
async def test_heartbeat_and_offline_timeout(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """heartbeats update last-seen; silence past the offline timeout takes the node offline"""
    node = peer()
    await registered(stack, node)

    async def last_seen() -> float:
        return float(next(s["last_seen"] for s in (await stack.call(Api.SERVERS))["servers"]
                          if s["node_id"] == node.node_id))
    before = await last_seen()
    await asyncio.sleep(0.3)  # not a wait for an event: time must pass for the heartbeat's stamp to be newer
    await node.send(message(Msg.HEARTBEAT, node_id=node.node_id))
    await node.expect(Msg.HEARTBEAT_ACK)
    assert await last_seen() > before
    await stack.wait_online(node.node_id, online=False, timeout=10)


@pytest.mark.case("A1-11")
async def test_approval_request_and_decision(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """an approval is stored, its decision reaches the node, and a second decision is refused"""
    node = peer()
    await registered(stack, node)
    approval_id = new_id("appr")
    await node.send(message(Msg.APPROVAL_REQUEST, approval_id=approval_id, kind="command", command="echo hi",
                            cwd="/tmp", reason="test"))
    await approval_pending(stack, approval_id)
    decided = await stack.call(Api.APPROVALS_DECIDE, {"approval_id": approval_id, "decision": "accept",
                                                      "decided_by": "tester"})
    assert decided["state"] == "approved" and decided["delivered"]
    got = await node.expect(Msg.APPROVAL_DECISION)
    assert got["approval_id"] == approval_id and got["decision"] == "accept"
    second = await stack.result(Api.APPROVALS_DECIDE, {"approval_id": approval_id, "decision": "decline"})
    assert second["ok"] is False and second["error_kind"] == "conflict" and "tester" in second["error"], second


@pytest.mark.case("A1-12")
async def test_state_survives_restart(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """tokens, chat routes, thread ids and pending approvals read back after a manager restart"""
    node = peer()
    await registered(stack, node)
    chat_key = new_id("chat")
    await stack.call(Api.CHAT_SELECT, {"chat_key": chat_key, "node_id": node.node_id, "model": "gpt-5.5"})
    call = asyncio.create_task(stack.result(Api.DISPATCH_TEXT, {"chat_key": chat_key, "text": "hi", "timeout": 10}))
    assign = await node.expect(Msg.TASK_ASSIGN)
    await node.send(message(Msg.TASK_RESULT, task_id=assign["task_id"], result={"ok": True, "text": "x",
                                                                                 "thread_id": "thr_1"}))
    assert (await call)["ok"]
    approval_id = new_id("appr")
    await node.send(message(Msg.APPROVAL_REQUEST, approval_id=approval_id, kind="command", command="ls"))
    await approval_pending(stack, approval_id)
    tokens_before = (await stack.call(Api.TOKENS, method="GET"))["tokens"]

    await stack.restart_manager()

    assert (await stack.call(Api.TOKENS, method="GET"))["tokens"] == tokens_before
    chat = await stack.call(Api.CHAT, {"chat_key": chat_key})
    assert chat["node_id"] == node.node_id and chat["model"] == "gpt-5.5"
    assert chat["threads"] == {node.node_id: "thr_1"}
    pending = (await stack.call(Api.APPROVALS, {"state": "pending"}))["approvals"]
    assert [a["command"] for a in pending if a["approval_id"] == approval_id] == ["ls"]
    # The scripted node is gone with the old manager; tidy its approval so later cases start clean.
    await stack.call(Api.APPROVALS_DECIDE, {"approval_id": approval_id, "decision": "decline"})


@pytest.mark.case("A1-13")
async def test_duplicate_registration(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """two live sockets with one node_id: the newer wins, the older is closed, listed once"""
    first = peer()
    token = await registered(stack, first)
    second = await peer(first.node_id).connect()
    assert (await second.register(token))["type"] == Msg.REGISTER_OK
    assert await first.closed() == CLOSE_REPLACED
    await second.send(message(Msg.HEARTBEAT, node_id=first.node_id))
    await second.expect(Msg.HEARTBEAT_ACK)
    assert (await stack.call(Api.SERVERS))["online"].count(first.node_id) == 1


@pytest.mark.case("A1-14")
async def test_out_of_order_messages(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """a message before register is refused with no state change; a result before its ack is accepted"""
    early = await peer().connect()
    before = await stack.call(Api.SERVERS)
    await early.send(message(Msg.TASK_RESULT, task_id="task_x", result={"ok": True}))
    reply = await early.expect(Msg.REGISTER_ERROR)
    assert "register first" in reply["error"]
    assert await early.closed() == CLOSE_PROTOCOL
    assert await stack.call(Api.SERVERS) == before

    node = peer()
    await registered(stack, node)
    call = asyncio.create_task(stack.result(Api.DISPATCH, {"node_id": node.node_id, "prompt": "x", "timeout": 10}))
    assign = await node.expect(Msg.TASK_ASSIGN)
    await node.send(message(Msg.TASK_RESULT, task_id=assign["task_id"], result={"ok": True, "text": "early"}))
    await node.send(message(Msg.TASK_ACK, task_id=assign["task_id"], state="queued"))
    assert (await call)["text"] == "early"
    task = (await stack.call(Api.TASKS, {"task_id": assign["task_id"]}))["task"]
    assert task["state"] == "done"  # the late ack did not move a final task backwards


@pytest.mark.case("A1-15")
async def test_orphan_task_result(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """an orphan task_result is ignored, logged and counted, with no state change"""
    node = peer()
    await registered(stack, node)
    counts_before = (await stack.call(Api.TASKS))["counts"]
    orphans_before = await stack.metric("orphan_results")
    await node.send(message(Msg.TASK_RESULT, task_id="task_does_not_exist", result={"ok": True}))
    await node.send(message(Msg.HEARTBEAT, node_id=node.node_id))
    await node.expect(Msg.HEARTBEAT_ACK)  # frames are handled in order: the orphan was processed
    assert await stack.metric("orphan_results") == orphans_before + 1
    assert (await stack.call(Api.TASKS))["counts"] == counts_before
    assert "op=orphan_result_ignored" in stack.procs["manager"].log_text()


@pytest.mark.case("A1-16")
async def test_rpc_timeout_with_late_reply(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """an app-server call times out as ok=true/result.ok=false; the late reply is dropped cleanly"""
    node = peer()
    await registered(stack, node)
    late_before = await stack.metric("late_rpc_responses")
    status, env = await stack.request("POST", Api.APPSERVER, {"node_id": node.node_id, "method": "thread/list", "params": {},
                                                              "timeout": 0.3})
    assert status == 200 and env["ok"] is True
    assert env["result"]["ok"] is False and env["result"]["error_kind"] == "timeout"
    req = await node.expect(Msg.APPSERVER_REQUEST)
    await node.send(message(Msg.APPSERVER_RESPONSE, request_id=req["request_id"], result={"ok": True, "result": {}}))
    await node.send(message(Msg.HEARTBEAT, node_id=node.node_id))
    await node.expect(Msg.HEARTBEAT_ACK)
    assert await stack.metric("late_rpc_responses") == late_before + 1
    assert node.node_id in (await stack.call(Api.SERVERS))["online"]


@pytest.mark.case("A1-17")
async def test_db_lock_conflict(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """a held SQLite lock gives storage_error with nothing half-written, and the manager recovers"""
    # A result that meets the lock is kept and stored once the lock is gone: the node sent it only once.
    node = peer()
    await registered(stack, node)
    manager = stack.procs["manager"]
    deferred_before = await stack.metric("results_deferred")
    assigned, deferred = len(manager.log_lines("task_assigned")), len(manager.log_lines("result_deferred"))
    call = asyncio.create_task(stack.result(Api.DISPATCH, {"node_id": node.node_id, "prompt": "x", "timeout": 20}))
    assign = await node.expect(Msg.TASK_ASSIGN)
    await manager.wait_log("task_assigned", seen=assigned)  # the dispatch's last write: the lock must not meet it
    async with db_locked(stack.db_path, stack.faults):
        await node.send(message(Msg.TASK_RESULT, task_id=assign["task_id"], result={"ok": True, "text": "kept"}))
        # The manager waits out its busy timeout, then defers the result.
        line = await manager.wait_log("result_deferred", seen=deferred)
        assert f"task_id={assign['task_id']}" in line, line
        assert await stack.metric("results_deferred") == deferred_before + 1
    assert (await call)["text"] == "kept"
    assert (await stack.call(Api.TASKS, {"task_id": assign["task_id"]}))["task"]["state"] == "done"

    tokens_before = len((await stack.call(Api.TOKENS, method="GET"))["tokens"])
    async with db_locked(stack.db_path, stack.faults):
        result = await stack.result(Api.TOKENS, {"note": "during-lock"})
        assert result["ok"] is False and result["error_kind"] == "storage_error" and result["retriable"] is True, result
        assert "token" not in result
    assert len((await stack.call(Api.TOKENS, method="GET"))["tokens"]) == tokens_before
    created = await stack.call(Api.TOKENS, {"note": "after-lock"})
    assert created["token"]
    tokens = (await stack.call(Api.TOKENS, method="GET"))["tokens"]
    assert [t["note"] for t in tokens].count("during-lock") == 0 and len(tokens) == tokens_before + 1


@pytest.mark.case("A1-18")
async def test_invalid_requests(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """malformed requests get outer ok=false/4xx/401 or a close code, and the manager stays up"""
    status, env = await stack.request("POST", Api.DISPATCH, {"prompt": "x"})
    assert (status, env["ok"], env["error_kind"]) == (400, False, "invalid_request") and "node_id" in env["error"]
    for token in ("", "wrong"):
        status, env = await stack.request("GET", Api.SERVERS, token=token)
        assert (status, env["ok"], env["error_kind"]) == (401, False, "unauthorized")
    assert stack._http is not None
    async with stack._http.post(stack.manager_url + Api.DISPATCH, data=b"{not json",
                                headers={"Authorization": f"Bearer {stack.control_token}"}) as resp:
        body = await resp.json()
        assert resp.status == 400 and body["ok"] is False and "not JSON" in body["error"]

    node = peer()
    await registered(stack, node)
    await node.send_raw("{not json")
    assert "not JSON" in (await node.expect(Msg.ERROR))["error"]
    await node.send_raw(json.dumps({"type": "no_such_type"}))
    assert "unknown message type" in (await node.expect(Msg.ERROR))["error"]
    await node.send_raw(json.dumps({"type": Msg.TASK_RESULT.value}))
    assert "task_id" in (await node.expect(Msg.ERROR))["error"]
    try:
        await node.send_raw("x" * (MAX_FRAME_BYTES + 1))
    except ConnectionError:
        pass  # the manager may close on the frame's header before the whole megabyte is written
    assert await node.closed() == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    async with stack._http.get(stack.manager_url + Api.HEALTHZ) as resp:
        assert resp.status == 200


@pytest.mark.case("S-07")
async def test_mixed_protocol_versions(stack: Stack, peer: Callable[..., ScriptedNode]) -> None:
    """register carries the protocol version: an older compatible node works, another is refused naming both"""
    for version, accepted in ((MIN_NODE_PROTOCOL, True), (PROTOCOL_VERSION, True), (PROTOCOL_VERSION + 1, False),
                              (0, False)):
        node = peer()
        token = (await stack.call(Api.TOKENS, {"node_id": node.node_id}))["token"]
        await node.connect()
        said = {"state": "not_logged_in", "problem": "scripted"} if version >= READINESS_PROTOCOL else None
        await node.send(message(Msg.REGISTER, node_id=node.node_id, token=token, version="scripted",
                                protocol=version, readiness=said))
        answer = await node.expect(Msg.REGISTER_OK, Msg.REGISTER_ERROR)
        if accepted:
            assert answer["type"] == Msg.REGISTER_OK, (version, answer)
            await node.send(message(Msg.HEARTBEAT, node_id=node.node_id))
            await node.expect(Msg.HEARTBEAT_ACK)  # the session works
            # Readiness comes with register and with each change (protocol 3); an older node's is null (unknown).
            shown = (await stack.call(Api.STATUS, {"node_id": node.node_id}))["readiness"]
            assert shown == said, (version, shown)
            if said is not None:
                await node.send(message(Msg.READINESS, readiness={"state": "ready"}))
                await stack.wait_readiness(node.node_id, "ready", timeout=5)
        else:
            assert answer["type"] == Msg.REGISTER_ERROR, (version, answer)
            named = f"protocol {version}, this manager {MIN_NODE_PROTOCOL}..{PROTOCOL_VERSION}"
            assert named in answer["error"], answer
            assert await node.closed() == CLOSE_PROTOCOL
