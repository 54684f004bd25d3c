"""The node-facing WebSocket: registration, heartbeats, and every message a node sends.

A malformed or unexpected frame gets an `error` reply naming the field (or a close code before
registration); it never takes the manager down, and an unregistered peer changes no state.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import WebSocketError, WSCloseCode, WSMessage, WSMsgType, web

from runtime.logfmt import log
from runtime.manager.hub import NodeSession
from runtime.manager.keys import MANAGER
from runtime.manager.sender import Sender
from runtime.manager.service import Manager
from runtime.protocol import (CLOSE_PROTOCOL, CLOSE_REPLACED, CLOSE_UNAUTHORIZED, FINAL_STATES, MAX_FRAME_BYTES,
                              MIN_NODE_PROTOCOL, NODE_AUTH_HEADER, PROTOCOL_VERSION, ApprovalState, ErrorKind,
                              RelayError, TaskState, bearer_token, control_fail, encode_bytes, new_id)
from runtime.protocol import wire

logger = logging.getLogger("codex_manager.ws")

F = TypeVar("F", bound=wire.Frame)
Handler = Callable[[Manager, NodeSession, Any], Awaitable[None]]
HANDLERS: dict[type[wire.Frame], Handler] = {}


def on(frame_type: type[F]) -> Callable[[Callable[[Manager, NodeSession, F], Awaitable[None]]], Handler]:
    def register(fn: Callable[[Manager, NodeSession, F], Awaitable[None]]) -> Handler:
        HANDLERS[frame_type] = fn
        return fn
    return register


async def node_socket(request: web.Request) -> web.StreamResponse:
    mgr = request.app[MANAGER]
    if mgr.hub.unregistered >= mgr.config.max_unregistered:
        # Unauthenticated work stays cheap: past the cap a new socket costs one HTTP reply.
        mgr.hub.counters["registrations_busy"] += 1
        return _http_refusal(RelayError(ErrorKind.BUSY, f"{mgr.hub.unregistered} node sockets are still registering"))
    mgr.hub.unregistered += 1
    try:
        header_token = bearer_token(request.headers.get(NODE_AUTH_HEADER))
        authenticated = False
        if header_token is not None:
            try:
                mgr.throttle.check(request.remote, mgr.hub.counters)
            except RelayError as err:
                return _http_refusal(err)
            authenticated = await _live_token(mgr, header_token) is not None
        # Only a socket that proved a token on its upgrade request may send large frames (wire.NODE_AUTH_HEADER).
        max_size = MAX_FRAME_BYTES if authenticated else mgr.config.preauth_frame_bytes
        ws = web.WebSocketResponse(max_msg_size=max_size, heartbeat=None, timeout=mgr.config.close_timeout)
        sender = Sender(ws, request, mgr.limits, "node", mgr.hub.counters, mgr.tasks)
        await ws.prepare(request)
        try:
            # One deadline for the whole wait: pings or a trickle of bytes do not extend it.
            async with asyncio.timeout(mgr.config.register_timeout):
                first = await ws.receive()
        except TimeoutError:
            await _refuse(mgr, ws, RelayError(ErrorKind.INVALID_REQUEST, "no register message in time"),
                          CLOSE_PROTOCOL)
            return ws
        session = await _register(mgr, ws, sender, first, request.remote, header_token)
    finally:
        mgr.hub.unregistered -= 1
    if session is None:
        return ws
    try:
        await _serve(mgr, session)
    finally:
        await sender.stop()
        await mgr.session_closed(session)
    return ws


async def _serve(mgr: Manager, session: NodeSession) -> None:
    async for frame in session.ws:
        if frame.type != WSMsgType.TEXT:
            session.send(wire.ErrorReply(**RelayError(ErrorKind.INVALID_REQUEST,
                                                      "only JSON text frames are accepted").fields()))
            continue
        session.last_seen = time.time()
        try:
            msg = wire.decode_node_frame(frame.data)
            handler = HANDLERS.get(type(msg))
            if handler is None:
                raise RelayError(ErrorKind.INVALID_REQUEST,
                                 f"a registered node may not send {msg.__struct_config__.tag!r}")
            await handler(mgr, session, msg)
        except RelayError as err:
            mgr.hub.counters["ws_protocol_errors"] += 1
            log(logger, logging.WARNING, "bad_frame", node_id=session.node_id, error_kind=err.kind.value,
                error=err.error)
            session.send(wire.ErrorReply(**err.fields()))


def _http_refusal(err: RelayError) -> web.Response:
    return web.Response(body=encode_bytes(control_fail(err)), status=err.http_status, content_type="application/json")


async def _live_token(mgr: Manager, token: str) -> dict[str, Any] | None:
    """The token's row if it is known and not revoked, else None; a DB that does not answer counts as None."""
    try:
        row = await mgr.store.token_for(token)
    except RelayError:
        return None
    return row if row is not None and row["revoked_at"] is None else None


async def _register(mgr: Manager, ws: web.WebSocketResponse, sender: Sender, frame: WSMessage,
                    address: str | None, header_token: str | None) -> NodeSession | None:
    if frame.type != WSMsgType.TEXT:
        too_big = isinstance(frame.data, WebSocketError) and frame.data.code == WSCloseCode.MESSAGE_TOO_BIG
        if frame.type == WSMsgType.ERROR and too_big:
            # aiohttp has already closed the socket with 1009 at the frame's header, without reading it.
            mgr.hub.counters["registrations_refused"] += 1
            log(logger, logging.WARNING, "register_refused", error_kind=ErrorKind.TOO_LARGE.value,
                error=f"a frame over {mgr.config.preauth_frame_bytes} bytes before registering: a node sends its "
                      f"token on the upgrade request ({NODE_AUTH_HEADER}) to send larger ones")
            return None
        if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return None
        await _refuse(mgr, ws, RelayError(ErrorKind.INVALID_REQUEST, "the first frame must be a JSON register"),
                      CLOSE_PROTOCOL)
        return None
    try:
        msg = wire.decode_node_frame(frame.data)
        if not isinstance(msg, wire.Register):
            raise RelayError(ErrorKind.INVALID_REQUEST,
                             f"register first; got {msg.__struct_config__.tag!r} before registering")
        if not MIN_NODE_PROTOCOL <= msg.protocol <= PROTOCOL_VERSION:
            raise RelayError(ErrorKind.INVALID_REQUEST, f"the node speaks protocol {msg.protocol}, this manager "
                             f"{MIN_NODE_PROTOCOL}..{PROTOCOL_VERSION}: upgrade the older of the two")
        mgr.throttle.check(address, mgr.hub.counters)
        if header_token is not None and msg.token and msg.token != header_token:
            raise RelayError(ErrorKind.UNAUTHORIZED, "the register frame's token differs from the upgrade "
                             f"request's {NODE_AUTH_HEADER} header: send one token")
        token = msg.token or header_token
        if not token:
            raise RelayError(ErrorKind.UNAUTHORIZED, "missing token: send `Authorization: Bearer <node token>` on "
                             "the upgrade request, or the node token in `token`")
        row = await mgr.store.token_for(token)  # again: it may have been revoked since the upgrade
        if row is None or row["revoked_at"] is not None:
            mgr.throttle.failed(address)
            raise RelayError(ErrorKind.UNAUTHORIZED, "token is unknown or revoked: ask an admin for a new one")
        if row["node_id"] and row["node_id"] != msg.node_id:
            raise RelayError(ErrorKind.UNAUTHORIZED,
                             f"token is bound to node_id {row['node_id']!r}, not {msg.node_id!r}")
        # A token minted without a node_id (one for a fleet) may bring up new nodes, but never take over a node
        # that registered with another live token: only a token minted for that node_id may.
        owner = None if row["node_id"] else await mgr.store.node_token(msg.node_id)
        if owner is not None and owner != row["token_id"]:
            raise RelayError(ErrorKind.UNAUTHORIZED, f"node {msg.node_id!r} registered with another token: use it, "
                             f"or mint one with node_id={msg.node_id!r}")
    except RelayError as err:
        code = CLOSE_UNAUTHORIZED if err.kind == ErrorKind.UNAUTHORIZED else CLOSE_PROTOCOL
        await _refuse(mgr, ws, err, code)
        return None
    if msg.check:
        await _checked(mgr, ws, msg)
        return None

    session = NodeSession(node_id=msg.node_id, session_id=new_id("sess"), token_id=row["token_id"], sender=sender,
                          version=msg.version, protocol=msg.protocol, readiness=msg.readiness, cwd=msg.cwd,
                          allowed_roots=tuple(msg.allowed_roots))
    old = mgr.hub.sessions.get(msg.node_id)
    mgr.hub.sessions[msg.node_id] = session
    if old is not None and old is not session:
        # The newer session wins: a node that reconnects before its old socket timed out is not listed twice.
        mgr.hub.counters["sessions_replaced"] += 1
        mgr.tasks.spawn(old.sender.close(CLOSE_REPLACED, b"replaced by a newer session"), "close-replaced")
    try:
        await mgr.store.node_online(msg.node_id, row["token_id"], session.version)
    except RelayError as err:
        mgr.hub.sessions.pop(msg.node_id, None)
        await _refuse(mgr, ws, err, CLOSE_PROTOCOL)
        return None
    session.send(wire.RegisterOk(node_id=msg.node_id, session_id=session.session_id,
                                 heartbeat_interval=mgr.config.heartbeat_interval,
                                 offline_timeout=mgr.config.offline_timeout))
    log(logger, logging.INFO, "node_registered", node_id=msg.node_id, session_id=session.session_id,
        token_id=row["token_id"], protocol=msg.protocol, readiness=msg.readiness and msg.readiness.state.value)
    mgr.hub.publish(wire.NodeOnline(node_id=msg.node_id))
    await _sync_tasks(mgr, session)
    return session


async def _refuse(mgr: Manager, ws: web.WebSocketResponse, err: RelayError, code: int) -> None:
    """Tell an unregistered peer why, within the close timeout; it gets nothing else from us."""
    mgr.hub.counters["registrations_refused"] += 1
    log(logger, logging.WARNING, "register_refused", error_kind=err.kind.value, error=err.error)
    with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
        async with asyncio.timeout(mgr.config.close_timeout):
            await ws.send_frame(encode_bytes(wire.RegisterError(**err.fields())), WSMsgType.TEXT)
            await ws.close(code=code, message=err.kind.value.encode())


async def _checked(mgr: Manager, ws: web.WebSocketResponse, msg: wire.Register) -> None:
    """`codex-relay-node doctor`: the token and protocol pass; say so and close, leaving any live session alone."""
    mgr.hub.counters["registrations_checked"] += 1
    log(logger, logging.INFO, "register_checked", node_id=msg.node_id, protocol=msg.protocol)
    with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
        async with asyncio.timeout(mgr.config.close_timeout):
            await ws.send_frame(encode_bytes(wire.RegisterOk(node_id=msg.node_id, session_id="")), WSMsgType.TEXT)
            await ws.close()


async def _sync_tasks(mgr: Manager, session: NodeSession) -> None:
    """Ask the node about every task the DB still holds open for it, e.g. after a manager restart."""
    try:
        open_tasks = await mgr.store.open_tasks(session.node_id)
    except RelayError:
        return  # the periodic sweep retries once the DB answers again
    if open_tasks:
        session.send(wire.TaskSync(task_ids=[t["task_id"] for t in open_tasks]))


# ---- what a registered node may send --------------------------------------------------------------

@on(wire.Heartbeat)
async def _heartbeat(mgr: Manager, session: NodeSession, msg: wire.Heartbeat) -> None:
    session.codex_rss_mb, session.codex_recycles = msg.codex_rss_mb, msg.codex_recycles
    session.send(wire.HeartbeatAck(ts=time.time()))


@on(wire.ReadinessReport)
async def _readiness(mgr: Manager, session: NodeSession, msg: wire.ReadinessReport) -> None:
    before = session.readiness.state if session.readiness else None
    session.readiness = msg.readiness
    if msg.readiness.state != before:
        log(logger, logging.INFO, "node_readiness", node_id=session.node_id, state=msg.readiness.state.value,
            problem=msg.readiness.problem)


@on(wire.TaskAck)
async def _task_ack(mgr: Manager, session: NodeSession, msg: wire.TaskAck) -> None:
    if await mgr.owned_task(session.node_id, msg.task_id) is not None:
        await mgr.store.advance_task(msg.task_id, TaskState.RUNNING)


@on(wire.TaskProgress)
async def _task_progress(mgr: Manager, session: NodeSession, msg: wire.TaskProgress) -> None:
    task = await mgr.owned_task(session.node_id, msg.task_id)
    if task is not None and task["state"] not in FINAL_STATES:
        mgr.hub.publish(wire.TaskProgressEvent(task_id=msg.task_id, node_id=session.node_id,
                                               chat_key=task["chat_key"], text=msg.text, activity=msg.activity,
                                               earlier=msg.earlier, notice=msg.notice, queued=msg.queued))


@on(wire.TaskResult)
async def _task_result(mgr: Manager, session: NodeSession, msg: wire.TaskResult) -> None:
    await mgr.accept_result(session.node_id, msg.task_id, msg.result)  # it refuses another node's task


@on(wire.TaskStateReport)
async def _task_state(mgr: Manager, session: NodeSession, msg: wire.TaskStateReport) -> None:
    if await mgr.owned_task(session.node_id, msg.task_id) is not None:
        await mgr.accept_task_state(session.node_id, msg.task_id, msg.state)


@on(wire.AppserverResponse)
async def _appserver_response(mgr: Manager, session: NodeSession, msg: wire.AppserverResponse) -> None:
    if mgr.hub.resolve_rpc(session.node_id, msg.request_id, msg.result):
        return
    owner = mgr.hub.rpc_waiters.get(msg.request_id)
    if owner is not None and owner[0] != session.node_id:
        mgr.hub.counters["foreign_messages"] += 1
        raise RelayError(ErrorKind.INVALID_REQUEST, f"call {msg.request_id!r} went to another node")
    mgr.hub.counters["late_rpc_responses"] += 1
    log(logger, logging.INFO, "late_rpc_response_dropped", node_id=session.node_id, request_id=msg.request_id)


@on(wire.FileResponse)
async def _file_response(mgr: Manager, session: NodeSession, msg: wire.FileResponse) -> None:
    if mgr.hub.resolve_rpc(session.node_id, msg.request_id, msg.result):
        return
    mgr.hub.counters["late_rpc_responses"] += 1
    log(logger, logging.INFO, "late_file_response_dropped", node_id=session.node_id, request_id=msg.request_id)


@on(wire.ApprovalRequest)
async def _approval_request(mgr: Manager, session: NodeSession, msg: wire.ApprovalRequest) -> None:
    if msg.task_id is not None:
        task = await mgr.owned_task(session.node_id, msg.task_id)
        # The chat is the task's, not what the node says: an approval cannot be steered into another chat.
        msg.chat_key = task["chat_key"] if task is not None else None
    await mgr.approval_requested(session.node_id, msg)


@on(wire.ApprovalExpired)
async def _approval_expired(mgr: Manager, session: NodeSession, msg: wire.ApprovalExpired) -> None:
    await mgr.close_approval(session.node_id, msg.approval_id, ApprovalState.EXPIRED, "timeout")


@on(wire.ApprovalWithdrawn)
async def _approval_withdrawn(mgr: Manager, session: NodeSession, msg: wire.ApprovalWithdrawn) -> None:
    await mgr.close_approval(session.node_id, msg.approval_id, ApprovalState.WITHDRAWN, "codex", msg.reason or None)


@on(wire.ErrorReply)
async def _error(mgr: Manager, session: NodeSession, msg: wire.ErrorReply) -> None:
    # A node's complaint about a frame of ours: worth a line in the log, never a reply (that could loop).
    log(logger, logging.WARNING, "node_error_reply", node_id=session.node_id, error_kind=msg.error_kind,
        error=msg.error)
