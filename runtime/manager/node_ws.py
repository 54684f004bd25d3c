"""The node-facing WebSocket: registration, heartbeats, and every message a node sends.

A malformed or unexpected frame gets an `error` reply (or a close code before registration);
it never takes the manager down, and an unregistered peer changes no state.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from runtime.logfmt import log
from runtime.manager.hub import NodeSession
from runtime.manager.service import Manager
from runtime.protocol import (CLOSE_PROTOCOL, CLOSE_REPLACED, CLOSE_UNAUTHORIZED, MAX_FRAME_BYTES,
                              PROTOCOL_VERSION, ApprovalState, Event, Msg, RelayError, TaskState, decode,
                              encode, message, new_id, parse_msg_type, require)

logger = logging.getLogger("codex_manager.ws")


async def node_socket(request: web.Request) -> web.WebSocketResponse:
    mgr: Manager = request.app["manager"]
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=None)
    await ws.prepare(request)
    session = await _register(mgr, ws)
    if session is None:
        return ws
    try:
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                await _reply_error(session.ws, RelayError("invalid_request", "only JSON text frames are accepted"))
                continue
            session.last_seen = time.time()
            try:
                msg = decode(frame.data)
                await _handle(mgr, session, parse_msg_type(msg), msg)
            except RelayError as err:
                mgr.hub.counters["ws_protocol_errors"] += 1
                log(logger, logging.WARNING, "bad_frame", node_id=session.node_id, error_kind=err.kind,
                    error=err.error)
                await _reply_error(session.ws, err)
    finally:
        await mgr.session_closed(session)
    return ws


async def _register(mgr: Manager, ws: web.WebSocketResponse) -> NodeSession | None:
    try:
        frame = await ws.receive(timeout=mgr.config.register_timeout)
    except TimeoutError:
        await _refuse(mgr, ws, RelayError("invalid_request", "no register message in time"), CLOSE_PROTOCOL)
        return None
    if frame.type != WSMsgType.TEXT:
        if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return None
        await _refuse(mgr, ws, RelayError("invalid_request", "the first frame must be a JSON register"),
                      CLOSE_PROTOCOL)
        return None
    try:
        msg = decode(frame.data)
        if parse_msg_type(msg) != Msg.REGISTER:
            raise RelayError("invalid_request", f"register first; got {msg['type']!r} before registering")
        node_id = require(msg, "node_id")
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            raise RelayError("unauthorized", "missing token: pass the node token in `token`")
        row = await mgr.store.token_for(token)
        if row is None or row["revoked_at"] is not None:
            raise RelayError("unauthorized", "token is unknown or revoked: ask an admin for a new one")
        if row["node_id"] and row["node_id"] != node_id:
            raise RelayError("unauthorized", f"token is bound to node_id {row['node_id']!r}, not {node_id!r}")
    except RelayError as err:
        code = CLOSE_UNAUTHORIZED if err.kind == "unauthorized" else CLOSE_PROTOCOL
        await _refuse(mgr, ws, err, code)
        return None

    session = NodeSession(node_id=node_id, session_id=new_id("sess"), token_id=row["token_id"], ws=ws,
                          version=str(msg.get("version", "")))
    old = mgr.hub.sessions.get(node_id)
    mgr.hub.sessions[node_id] = session
    if old is not None and old is not session:
        # The newer session wins: a node that reconnects before its old socket timed out is not listed twice.
        mgr.hub.counters["sessions_replaced"] += 1
        await old.ws.close(code=CLOSE_REPLACED, message=b"replaced by a newer session")
    try:
        await mgr.store.node_online(node_id, row["token_id"], session.version)
    except RelayError as err:
        mgr.hub.sessions.pop(node_id, None)
        await _refuse(mgr, ws, err, CLOSE_PROTOCOL)
        return None
    await session.send(message(Msg.REGISTER_OK, node_id=node_id, session_id=session.session_id,
                               protocol=PROTOCOL_VERSION, heartbeat_interval=mgr.config.heartbeat_interval,
                               offline_timeout=mgr.config.offline_timeout))
    log(logger, logging.INFO, "node_registered", node_id=node_id, session_id=session.session_id,
        token_id=row["token_id"])
    mgr.hub.publish(Event.NODE_ONLINE, node_id=node_id)
    await _sync_tasks(mgr, session)
    return session


async def _refuse(mgr: Manager, ws: web.WebSocketResponse, err: RelayError, code: int) -> None:
    mgr.hub.counters["registrations_refused"] += 1
    log(logger, logging.WARNING, "register_refused", error_kind=err.kind, error=err.error)
    try:
        await ws.send_str(encode(message(Msg.REGISTER_ERROR, **err.fields())))
    except (ConnectionError, RuntimeError):
        pass
    await ws.close(code=code, message=err.kind.encode())


async def _reply_error(ws: web.WebSocketResponse, err: RelayError) -> None:
    try:
        await ws.send_str(encode(message(Msg.ERROR, **err.fields())))
    except (ConnectionError, RuntimeError):
        pass


async def _sync_tasks(mgr: Manager, session: NodeSession) -> None:
    """Ask the node about every task the DB still holds open for it, e.g. after a manager restart."""
    try:
        open_tasks = await mgr.store.open_tasks(session.node_id)
    except RelayError:
        return  # the periodic sweep retries once the DB answers again
    if open_tasks:
        await session.send(message(Msg.TASK_SYNC, task_ids=[t["task_id"] for t in open_tasks]))


async def _handle(mgr: Manager, session: NodeSession, kind: Msg, msg: dict[str, Any]) -> None:
    if kind == Msg.HEARTBEAT:
        await session.send(message(Msg.HEARTBEAT_ACK, ts=time.time()))
    elif kind == Msg.TASK_ACK:
        task_id = require(msg, "task_id")
        task = await mgr.store.task(task_id)
        if task is not None and task["node_id"] == session.node_id:
            await mgr.store.advance_task(task_id, TaskState.RUNNING)
    elif kind == Msg.TASK_PROGRESS:
        task_id = require(msg, "task_id")
        mgr.hub.publish(Event.TASK_PROGRESS, task_id=task_id, node_id=session.node_id,
                        chat_key=msg.get("chat_key"), text=msg.get("text", ""))
    elif kind == Msg.TASK_RESULT:
        await mgr.accept_result(session.node_id, require(msg, "task_id"), msg.get("result") or {})
    elif kind == Msg.TASK_STATE:
        await mgr.accept_task_state(session.node_id, require(msg, "task_id"), require(msg, "state"))
    elif kind == Msg.APPSERVER_RESPONSE:
        request_id = require(msg, "request_id")
        if not mgr.hub.resolve_rpc(session.node_id, request_id, msg.get("result") or {}):
            mgr.hub.counters["late_rpc_responses"] += 1
            log(logger, logging.INFO, "late_rpc_response_dropped", node_id=session.node_id, request_id=request_id)
    elif kind == Msg.APPROVAL_REQUEST:
        await mgr.approval_requested(session.node_id, msg)
    elif kind == Msg.APPROVAL_EXPIRED:
        approval_id = require(msg, "approval_id")
        if await mgr.store.decide_approval(approval_id, ApprovalState.EXPIRED, "decline", "timeout"):
            mgr.hub.publish(Event.APPROVAL_RESOLVED, approval_id=approval_id, state=ApprovalState.EXPIRED,
                            decision="decline", decided_by="timeout")
    else:
        raise RelayError("invalid_request", f"a node may not send {kind.value!r}")
