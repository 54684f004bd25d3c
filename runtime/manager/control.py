"""The HTTP control API: one handler per route of runtime.protocol.api, which declares its body and reply.

A body is decoded into its Struct before the handler runs, so a handler never sees a malformed field;
a bad one is a 4xx naming it. An HTTP 200 with `internal` is kept for real bugs.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from runtime.logfmt import log
from runtime.manager.collector import collection_paused
from runtime.aiotasks import cancel
from runtime.manager.keys import MANAGER
from runtime.manager.sender import Sender
from runtime.manager.service import Manager
from runtime.manager.store import ROUTE_FIELDS, THREAD_SETTINGS
from runtime.protocol import (MAX_BODY_BYTES, ROUTES, Api, ErrorKind, RelayError, Route, TaskAction, business_fail,
                              control_fail, encode_bytes, new_id)
from runtime.protocol import api
from runtime.protocol.wire import Hello, RpcOutcome, ThreadSettings, field_error

logger = logging.getLogger("codex_manager.control")
REPLAY_MAX = 10_000  # missed events sent to one reconnecting client; older ones are its loss, and logged

Handler = Callable[[Manager, Any, str], Awaitable[Any]]
HANDLERS: dict[tuple[str, Api], Handler] = {}


def handles(method: str, path: Api) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[(method, path)] = fn
        return fn
    return register


def ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, **fields}


# ---- handlers ----------------------------------------------------------------------------------

@handles("GET", Api.SERVERS)
async def servers(mgr: Manager, q: api.ServersQuery, trace_id: str) -> dict[str, Any]:
    limit = q.limit or -1
    nodes = mgr.store.list_nodes(q.online, q.after, limit)
    for node in nodes:
        session = mgr.hub.online(node["node_id"])
        # `online` is the live socket; `stored_online` is what the DB says, so checks can compare them.
        node["stored_online"] = bool(node["online"])
        node["online"] = session is not None
        if session is not None:
            node["last_seen"] = session.last_seen
            node["readiness"] = session.readiness
    next_after = nodes[-1]["node_id"] if nodes and len(nodes) == limit else None
    return ok(servers=nodes, online=sorted(mgr.hub.sessions), next_after=next_after)


@handles("POST", Api.STATUS)
async def status(mgr: Manager, body: api.NodeRef, trace_id: str) -> dict[str, Any]:
    node = mgr.store.node(body.node_id)
    if node is None:
        raise RelayError(ErrorKind.NOT_FOUND, f"unknown node {body.node_id!r}: see /api/servers")
    session = mgr.hub.online(body.node_id)
    open_tasks = await mgr.store.open_tasks(body.node_id)
    live = {"cwd": session.cwd or None, "allowed_roots": list(session.allowed_roots)} if session else {}
    return ok(**{**node, "online": session is not None, "open_tasks": len(open_tasks),
                 "last_seen": session.last_seen if session else node["last_seen"],
                 "readiness": session.readiness if session else None, **live})


@handles("POST", Api.DISPATCH)
async def dispatch(mgr: Manager, body: api.DispatchBody, trace_id: str) -> dict[str, Any]:
    return await mgr.dispatch(body.node_id, body.prompt, body.timeout, trace_id, task_id=body.task_id,
                              thread_id=body.thread_id, model=body.model, effort=body.effort)


@handles("POST", Api.DISPATCH_TEXT)
async def dispatch_text(mgr: Manager, body: api.DispatchTextBody, trace_id: str) -> dict[str, Any]:
    node_id = body.node_id or (await mgr.store.chat(body.chat_key))["node_id"]
    if not node_id:
        raise RelayError(ErrorKind.INVALID_REQUEST,
                         "missing field `node_id`: pass it or select a node for this chat first")
    # The chat's open tasks are read before its thread: a task that finishes in between has stored its thread.
    still_open = await mgr.store.open_tasks(node_id, body.chat_key)
    chat = await mgr.store.chat(body.chat_key)
    binding = chat["bindings"].get(node_id) or {}
    thread_id = binding.get("thread_id")
    settings = ThreadSettings(**{k: binding[k] for k in THREAD_SETTINGS if k in binding}) if binding else None
    # No thread yet, while the chat's earlier message is still open: that one is starting the thread to go on.
    follows = still_open[-1]["task_id"] if thread_id is None and still_open else None
    if body.action != TaskAction.TURN and thread_id is None and follows is None:
        raise RelayError(ErrorKind.INVALID_REQUEST, f"this chat has no Codex thread on {node_id} yet, so there is "
                                                    f"nothing to {body.action.value}: send a message first")
    steer = not chat["queue"] if body.steer is None else body.steer
    return await mgr.dispatch(node_id, body.text, body.timeout, trace_id, task_id=body.task_id,
                              chat_key=body.chat_key, thread_id=thread_id, model=chat["model"],
                              effort=chat["effort"], settings=settings, action=body.action, steer=steer,
                              follows=follows)


@handles("POST", Api.APPSERVER)
async def appserver(mgr: Manager, body: api.AppserverBody, trace_id: str) -> RpcOutcome:
    return await mgr.appserver(body.node_id, body.method, body.params, body.timeout, trace_id)


@handles("POST", Api.CONFIG_VALUE_WRITE)
async def config_value_write(mgr: Manager, body: api.ConfigValueWriteBody, trace_id: str) -> RpcOutcome:
    params = {"keyPath": body.key_path, "value": body.value, "mergeStrategy": body.merge_strategy}
    return await mgr.appserver(body.node_id, "config/value/write", params, body.timeout, trace_id)


@handles("GET", Api.APPROVALS)
async def approvals(mgr: Manager, q: api.ApprovalsQuery, trace_id: str) -> dict[str, Any]:
    return ok(approvals=await mgr.store.list_approvals(q.state))


@handles("POST", Api.APPROVALS_DECIDE)
async def decide(mgr: Manager, body: api.DecideBody, trace_id: str) -> dict[str, Any]:
    return ok(**await mgr.decide(body.approval_id, body.decision, body.decided_by, body.chat_key, body.admin,
                                 body.answers))


@handles("POST", Api.TOKENS)
async def token_generate(mgr: Manager, body: api.TokenBody, trace_id: str) -> dict[str, Any]:
    row, token = await mgr.store.create_token(body.node_id, body.note)
    log(logger, logging.INFO, "token_created", token_id=row["token_id"], node_id=row["node_id"])
    return ok(**row, token=token)


@handles("GET", Api.TOKENS)
async def token_list(mgr: Manager, body: api.NoBody, trace_id: str) -> dict[str, Any]:
    return ok(tokens=await mgr.store.list_tokens())


@handles("POST", Api.TOKENS_REVOKE)
async def token_revoke(mgr: Manager, body: api.TokenRef, trace_id: str) -> dict[str, Any]:
    return ok(**await mgr.revoke_token(body.token_id))


@handles("GET", Api.CHAT)
async def chat(mgr: Manager, q: api.ChatRef, trace_id: str) -> dict[str, Any]:
    return ok(**await mgr.store.chat(q.chat_key))


@handles("POST", Api.CHAT_SELECT)
async def chat_select(mgr: Manager, body: api.ChatSelectBody, trace_id: str) -> dict[str, Any]:
    fields = {k: getattr(body, k) for k in (*ROUTE_FIELDS, "thread_id", *THREAD_SETTINGS)
              if getattr(body, k) is not msgspec.UNSET}
    if not fields:
        raise RelayError(ErrorKind.INVALID_REQUEST, f"pass at least one of {', '.join(ROUTE_FIELDS)}, thread_id")
    if "thread_id" not in fields and any(k in fields for k in THREAD_SETTINGS):
        raise RelayError(ErrorKind.INVALID_REQUEST, "`cwd`, `sandbox` and `approval_policy` are a thread's: pass "
                                                    "them with the `thread_id` they belong to")
    await mgr.store.update_chat(body.chat_key, fields)
    return ok(**await mgr.store.chat(body.chat_key))


@handles("GET", Api.TASKS)
async def tasks(mgr: Manager, q: api.TasksQuery, trace_id: str) -> dict[str, Any]:
    if q.task_id:
        task = await mgr.store.task(q.task_id)
        if task is None:
            raise RelayError(ErrorKind.NOT_FOUND, f"no task {q.task_id!r}")
        return ok(task=task)
    return ok(open=await mgr.store.open_tasks(), counts=await mgr.store.task_counts())


@handles("POST", Api.TASKS_STOP)
async def tasks_stop(mgr: Manager, body: api.StopBody, trace_id: str) -> dict[str, Any]:
    return ok(**await mgr.stop_tasks(body.task_id, body.chat_key, body.stopped_by, body.admin))


@handles("GET", Api.USERS)
async def users(mgr: Manager, body: api.NoBody, trace_id: str) -> dict[str, Any]:
    return ok(users=await mgr.store.list_users())


@handles("POST", Api.USERS)
async def user_set(mgr: Manager, body: api.UserSetBody, trace_id: str) -> dict[str, Any]:
    await mgr.store.set_user(body.user_id, body.role)
    return ok(users=await mgr.store.list_users())


# ---- plumbing ----------------------------------------------------------------------------------

def authorize(request: web.Request) -> None:
    """The control token, compared in constant time; an address that keeps guessing is made to wait."""
    mgr = request.app[MANAGER]
    mgr.throttle.check(request.remote, mgr.hub.counters)
    expected = f"Bearer {mgr.config.control_token}".encode()
    if not hmac.compare_digest(request.headers.get("Authorization", "").encode(errors="replace"), expected):
        mgr.throttle.failed(request.remote)
        raise RelayError(ErrorKind.UNAUTHORIZED, "missing or wrong control token: send `Authorization: Bearer <token>`")


def _reply(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=encode_bytes(payload), status=status, content_type="application/json")


def trace_id_of(request: web.Request) -> str:
    """The caller's X-Trace-Id if it is a plain printable token, else a fresh one."""
    given = request.headers.get("X-Trace-Id", "")
    return given if given and len(given) <= 128 and given.isascii() and given.isprintable() else new_id("tr")


async def _body(request: web.Request, r: Route) -> Any:
    try:
        if request.method == "GET":
            return msgspec.convert(dict(request.query), r.body, strict=False)
        raw = await request.read()
        return msgspec.json.decode(raw or b"{}", type=r.body)
    except web.HTTPRequestEntityTooLarge:
        raise RelayError(ErrorKind.TOO_LARGE, f"the body is over {MAX_BODY_BYTES} bytes") from None
    except msgspec.ValidationError as exc:
        raise RelayError(ErrorKind.INVALID_REQUEST, field_error(exc)) from None
    except msgspec.DecodeError as exc:
        raise RelayError(ErrorKind.INVALID_REQUEST, f"the body is not JSON: {exc}") from None


def _view(r: Route, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def view(request: web.Request) -> web.Response:
        mgr = request.app[MANAGER]
        trace_id = trace_id_of(request)
        try:
            authorize(request)
            body = await _body(request, r)
            # A bulk handler never awaits, so nothing else runs while the collector is off.
            with collection_paused() if r.bulk else contextlib.nullcontext():
                return _reply({"ok": True, "result": await handler(mgr, body, trace_id)})
        except RelayError as err:
            if err.http_status != 200:
                mgr.hub.counters[f"control_{err.kind.value}"] += 1
                return _reply(control_fail(err), err.http_status)
            return _reply(business_fail(err))
        except Exception:
            logger.exception("control handler failed", extra={"kv": {"op": "control_internal", "path": r.path.value,
                                                                       "trace_id": trace_id}})
            return _reply(business_fail(RelayError(ErrorKind.INTERNAL, f"see the manager log, trace_id={trace_id}")))
    return view


async def events(request: web.Request) -> web.StreamResponse:
    """The event stream: approvals, task progress and results, node up/down, as WebSocket text frames."""
    try:
        authorize(request)
    except RelayError as err:
        return _reply(control_fail(err), err.http_status)
    mgr = request.app[MANAGER]
    ws = web.WebSocketResponse(heartbeat=10, timeout=mgr.config.close_timeout)
    if not ws.can_prepare(request).ok:
        return _reply(control_fail(RelayError(ErrorKind.INVALID_REQUEST, "the event stream is a WebSocket: "
                                              "connect with `Upgrade: websocket`")), 400)
    try:
        after = _cursor(request)
    except RelayError as err:
        return _reply(control_fail(err), 400)
    await ws.prepare(request)
    sender = Sender(ws, request, mgr.limits, "subscriber", mgr.hub.counters, mgr.tasks)
    # Subscribed first, so nothing published during the read below is lost; it waits, and follows the hello
    # and what this client missed, without repeats.
    sender.hold()
    mgr.hub.subscribers.add(sender)
    missed = [] if after is None else await mgr.store.events_after(after, REPLAY_MAX)
    hello = Hello(online=sorted(mgr.hub.sessions), manager_id=mgr.store.manager_id, last_seq=mgr.store.last_seq,
                  replayed=len(missed))
    sender.release([encode_bytes(hello)] + [frame for _, frame in missed],
                   missed[-1][0] if missed else after or 0)
    finished = mgr.tasks.spawn(sender.finished.wait(), "event-writer-done")
    reader = mgr.tasks.spawn(_drain(ws), "event-reader")
    try:
        # Whichever ends first ends the stream: a closed subscriber is forgotten at once, not at the next event;
        # one that was finished (a shutdown) or dropped ends here too.
        await asyncio.wait({finished, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        mgr.hub.subscribers.discard(sender)
        await cancel(finished)
        await cancel(reader)
        await sender.stop()
        await sender.close(1000, b"")
    return ws


def _cursor(request: web.Request) -> int | None:
    """The numbered event a reconnecting client handled last, if it names this manager's database."""
    after, manager_id = request.query.get("after"), request.query.get("manager")
    if after is None or manager_id != request.app[MANAGER].store.manager_id:
        return None  # a new client, or numbers from another database: live events only
    if not after.isdigit() or not after.isascii():
        raise RelayError(ErrorKind.INVALID_REQUEST, f"`after` must be an event number, got {after!r}")
    return int(after)


async def _drain(ws: web.WebSocketResponse) -> None:
    # Subscribers only listen; reading is what notices their close.
    async for frame in ws:
        if frame.type == WSMsgType.ERROR:
            break


def add_routes(app: web.Application) -> None:
    unbound = {(r.method, r.path) for r in ROUTES} - set(HANDLERS)
    assert not unbound, f"routes without a handler: {sorted(unbound)}"
    for r in ROUTES:
        app.router.add_route(r.method, r.path.value, _view(r, HANDLERS[(r.method, r.path)]))
    app.router.add_get(Api.EVENTS.value, events)


async def openapi_view(request: web.Request) -> web.Response:
    return _reply(OPENAPI)


OPENAPI = api.openapi()
