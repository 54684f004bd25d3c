"""The HTTP control API: bearer-authenticated handlers that each declare their own body schema.

The declarations drive both validation and /openapi.json, so the two cannot disagree.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from runtime.logfmt import log
from runtime.manager.collector import collection_paused
from runtime.manager.service import Manager
from runtime.protocol import (Api, ApprovalState, Decision, Event, RelayError, business_fail, business_ok,
                              control_fail, encode, encode_bytes, kind_of, loads, message, new_id)

logger = logging.getLogger("codex_manager.control")

Handler = Callable[[Manager, dict[str, Any], str], Awaitable[dict[str, Any]]]
TYPES = {"string": str, "number": (int, float), "integer": int, "object": dict, "boolean": bool, "any": object}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    required: dict[str, str]
    optional: dict[str, str]
    handler: Handler
    bulk: bool = False  # builds a large reply without awaiting: see collector.collection_paused


ROUTES: list[Route] = []


def route(method: str, path: Api, summary: str, required: dict[str, str] | None = None,
          optional: dict[str, str] | None = None, bulk: bool = False) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        ROUTES.append(Route(method, path.value, summary, required or {}, optional or {}, fn, bulk))
        return fn
    return register


def _validate(r: Route, body: dict[str, Any]) -> None:
    for name in r.required:
        if body.get(name) in (None, ""):
            raise RelayError("invalid_request", f"missing field `{name}`")
    for name, typ in {**r.required, **r.optional}.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, TYPES[typ]) or (typ != "boolean" and isinstance(value, bool))):
            raise RelayError("invalid_request", f"field `{name}` must be a {typ}")


def _positive(body: dict[str, Any], name: str, default: float) -> float:
    value = float(body.get(name) or default)
    if value <= 0:
        raise RelayError("invalid_request", f"field `{name}` must be positive")
    return value


def _flag(body: dict[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value in (None, ""):
        return None
    if str(value).lower() in ("true", "1"):
        return True
    if str(value).lower() in ("false", "0"):
        return False
    raise RelayError("invalid_request", f"`{name}` must be true or false, got {value!r}")


def _page_limit(value: str | None) -> int:
    """-1 (everything) unless the caller pages."""
    if value in (None, ""):
        return -1
    if not str(value).isdigit() or int(value) < 1:
        raise RelayError("invalid_request", f"`limit` must be a positive integer, got {value!r}")
    return int(value)


def _decision(value: str) -> Decision:
    try:
        return Decision(value)
    except ValueError:
        raise RelayError("invalid_request", f"decision must be one of {[d.value for d in Decision]}") from None


# ---- handlers ----------------------------------------------------------------------------------

@route("GET", Api.SERVERS, "Nodes known to the manager, with online state and last-seen; "
       "?online=true|false filters on the stored state, ?limit=N&after=<node_id> pages by node_id", {},
       {"online": "string", "limit": "string", "after": "string"}, bulk=True)
async def servers(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    limit = _page_limit(body.get("limit"))
    nodes = mgr.store.list_nodes(_flag(body, "online"), body.get("after") or "", limit)
    for node in nodes:
        session = mgr.hub.online(node["node_id"])
        # `online` is the live socket; `stored_online` is what the DB says, so checks can compare them.
        node["stored_online"] = bool(node["online"])
        node["online"] = session is not None
        if session is not None:
            node["last_seen"] = session.last_seen
    next_after = nodes[-1]["node_id"] if nodes and len(nodes) == limit else None
    return business_ok(servers=nodes, online=sorted(mgr.hub.sessions), next_after=next_after)


@route("POST", Api.STATUS, "One node's state", {"node_id": "string"})
async def status(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    node = mgr.store.node(body["node_id"])
    if node is None:
        raise RelayError("not_found", f"unknown node {body['node_id']!r}: see /api/servers")
    session = mgr.hub.online(node["node_id"])
    open_tasks = await mgr.store.open_tasks(node["node_id"])
    return business_ok(**{**node, "online": session is not None, "open_tasks": len(open_tasks),
                          "last_seen": session.last_seen if session else node["last_seen"]})


@route("POST", Api.DISPATCH, "Run one prompt on a node and wait for its result",
       {"node_id": "string", "prompt": "string"},
       {"timeout": "number", "task_id": "string", "thread_id": "string", "model": "string"})
async def dispatch(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    result = await mgr.dispatch(body["node_id"], body["prompt"], _positive(body, "timeout", 300), trace_id,
                                task_id=body.get("task_id"), thread_id=body.get("thread_id"), model=body.get("model"))
    return {"ok": True, "result": result}


@route("POST", Api.DISPATCH_TEXT, "A chat's message as a Codex turn on its thread (started on first use)",
       {"chat_key": "string", "text": "string"}, {"node_id": "string", "timeout": "number", "task_id": "string"})
async def dispatch_text(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    chat = await mgr.store.chat(body["chat_key"])
    node_id = body.get("node_id") or chat["node_id"]
    if not node_id:
        raise RelayError("invalid_request", "missing field `node_id`: pass it or select a node for this chat first")
    result = await mgr.dispatch(node_id, body["text"], _positive(body, "timeout", 300), trace_id,
                                task_id=body.get("task_id"), chat_key=body["chat_key"],
                                thread_id=chat["threads"].get(node_id), model=chat["model"])
    return {"ok": True, "result": result}


@route("POST", Api.APPSERVER, "Relay one app-server JSON-RPC method to a node",
       {"node_id": "string", "method": "string"}, {"params": "object", "timeout": "number"})
async def appserver(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    response = await mgr.appserver(body["node_id"], body["method"], body.get("params") or {},
                                   _positive(body, "timeout", 30), trace_id)
    return {"ok": True, "result": response}


@route("POST", Api.CONFIG_VALUE_WRITE, "Write one Codex config value on a node",
       {"node_id": "string", "key_path": "string"}, {"value": "any", "merge_strategy": "string", "timeout": "number"})
async def config_value_write(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    if "value" not in body:
        raise RelayError("invalid_request", "missing field `value`")
    params = {"keyPath": body["key_path"], "value": body["value"],
              "mergeStrategy": body.get("merge_strategy") or "replace"}
    response = await mgr.appserver(body["node_id"], "config/value/write", params,
                                   _positive(body, "timeout", 30), trace_id)
    return {"ok": True, "result": response}


@route("GET", Api.APPROVALS, "Approvals, optionally filtered by ?state=pending")
async def approvals(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    state = body.get("state")
    if state is not None and state not in {s.value for s in ApprovalState}:
        raise RelayError("invalid_request", f"state must be one of {[s.value for s in ApprovalState]}")
    return business_ok(approvals=await mgr.store.list_approvals(state))


@route("POST", Api.APPROVALS_DECIDE, "Decide a pending approval, once",
       {"approval_id": "string", "decision": "string"}, {"decided_by": "string"})
async def decide(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    decision = _decision(body["decision"])
    return business_ok(**await mgr.decide(body["approval_id"], decision, body.get("decided_by") or "api"))


@route("POST", Api.TOKENS, "Generate a node token (its plaintext is shown only in this answer)",
       {}, {"node_id": "string", "note": "string"})
async def token_generate(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    row, token = await mgr.store.create_token(body.get("node_id"), body.get("note"))
    log(logger, logging.INFO, "token_created", token_id=row["token_id"], node_id=row["node_id"])
    return business_ok(**row, token=token)


@route("GET", Api.TOKENS, "Node tokens, without their secrets")
async def token_list(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    return business_ok(tokens=await mgr.store.list_tokens())


@route("POST", Api.TOKENS_REVOKE, "Revoke a token and close live sessions that use it", {"token_id": "string"})
async def token_revoke(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    return business_ok(**await mgr.revoke_token(body["token_id"]))


@route("GET", Api.CHAT, "A chat's selected node, model and threads (?chat_key=)", {"chat_key": "string"})
async def chat(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    return business_ok(**await mgr.store.chat(body["chat_key"]))


@route("POST", Api.CHAT_SELECT, "Select a chat's node, model or thread (thread_id null starts a new one)",
       {"chat_key": "string"}, {"node_id": "string", "model": "string", "thread_id": "string"})
async def chat_select(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    fields = {k: body[k] for k in ("node_id", "model", "thread_id") if k in body}
    if not fields:
        raise RelayError("invalid_request", "pass at least one of `node_id`, `model`, `thread_id`")
    await mgr.store.update_chat(body["chat_key"], fields)
    return business_ok(**await mgr.store.chat(body["chat_key"]))


@route("GET", Api.TASKS, "Tasks not yet final, or one task with ?task_id=", {}, {"task_id": "string"})
async def tasks(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    if body.get("task_id"):
        task = await mgr.store.task(body["task_id"])
        if task is None:
            raise RelayError("not_found", f"no task {body['task_id']!r}")
        return business_ok(task=task)
    return business_ok(open=await mgr.store.open_tasks(), counts=await mgr.store.task_counts())


@route("GET", Api.USERS, "Telegram users allowed to use the bot")
async def users(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    return business_ok(users=await mgr.store.list_users())


@route("POST", Api.USERS, "Allow a Telegram user (role user or admin), or remove one (role null)",
       {"user_id": "integer"}, {"role": "string"})
async def user_set(mgr: Manager, body: dict[str, Any], trace_id: str) -> dict[str, Any]:
    role = body.get("role")
    if role not in (None, "user", "admin"):
        raise RelayError("invalid_request", "role must be `user`, `admin` or null")
    await mgr.store.set_user(body["user_id"], role)
    return business_ok(users=await mgr.store.list_users())


# ---- plumbing ----------------------------------------------------------------------------------

def _authorized(request: web.Request) -> bool:
    token: str = request.app["manager"].config.control_token
    return request.headers.get("Authorization", "") == f"Bearer {token}"


def _reply(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=encode_bytes(payload), status=status, content_type="application/json")


def _make_view(r: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def view(request: web.Request) -> web.Response:
        mgr: Manager = request.app["manager"]
        trace_id = request.headers.get("X-Trace-Id") or new_id("tr")
        try:
            if not _authorized(request):
                raise RelayError("unauthorized", "missing or wrong control token: send `Authorization: Bearer <token>`")
            body = await _body(request)
            _validate(r, body)
            # A bulk handler never awaits, so nothing else runs while the collector is off.
            with collection_paused() if r.bulk else contextlib.nullcontext():
                return _reply(await r.handler(mgr, body, trace_id))
        except RelayError as err:
            if kind_of(err.kind).http_status != 200:
                mgr.hub.counters[f"control_{err.kind}"] += 1
                return _reply(control_fail(err), kind_of(err.kind).http_status)
            return _reply(business_fail(err))
        except Exception:
            logger.exception("control handler failed", extra={"kv": {"op": "control_internal", "path": r.path,
                                                                       "trace_id": trace_id}})
            return _reply(business_fail(RelayError("internal", f"see the manager log, trace_id={trace_id}")))
    return view


async def _body(request: web.Request) -> dict[str, Any]:
    if request.method == "GET":
        return dict(request.query)
    try:
        body = loads(await request.read() or b"{}")
    except ValueError as exc:
        raise RelayError("invalid_request", f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RelayError("invalid_request", "body must be a JSON object")
    return body


async def events(request: web.Request) -> web.StreamResponse:
    """The event stream: approvals, task progress and results, node up/down, as WebSocket text frames."""
    if not _authorized(request):
        return _reply(control_fail(RelayError("unauthorized", "missing or wrong control token")), 401)
    mgr: Manager = request.app["manager"]
    ws = web.WebSocketResponse(heartbeat=10)
    await ws.prepare(request)
    queue = mgr.hub.subscribe()
    await ws.send_str(encode(message(Event.HELLO, ts=time.time(), online=sorted(mgr.hub.sessions))))
    reader = request.app.loop.create_task(_drain(ws))
    try:
        while not ws.closed:
            frame = await queue.get()
            if frame is None:
                break
            await ws.send_str(frame)
    except (ConnectionError, RuntimeError):
        pass
    finally:
        mgr.hub.unsubscribe(queue)
        reader.cancel()
        await ws.close()
    return ws


async def _drain(ws: web.WebSocketResponse) -> None:
    # Subscribers only listen; reading is what notices their close.
    async for frame in ws:
        if frame.type == WSMsgType.ERROR:
            break


def openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in ROUTES:
        props = {n: {"type": t} if t != "any" else {} for n, t in {**r.required, **r.optional}.items()}
        op: dict[str, Any] = {"summary": r.summary, "security": [{"bearer": []}],
                              "responses": {"200": {"description": "control envelope: ok, result{ok,...}"},
                                            "400": {"description": "invalid_request"},
                                            "401": {"description": "unauthorized"}}}
        if r.method == "GET":
            op["parameters"] = [{"name": n, "in": "query", "required": n in r.required, "schema": s}
                                for n, s in props.items()]
        else:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": list(r.required), "properties": props}}}}
        paths.setdefault(r.path, {})[r.method.lower()] = op
    paths[Api.EVENTS.value] = {"get": {"summary": "Event stream (WebSocket upgrade)", "responses": {
        "101": {"description": "switching to WebSocket"}}}}
    return {"openapi": "3.0.3", "info": {"title": "Codex Relay manager control API", "version": "1"},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}, "paths": paths}


def add_routes(app: web.Application) -> None:
    for r in ROUTES:
        app.router.add_route(r.method, r.path, _make_view(r))
    app.router.add_get(Api.EVENTS, events)
