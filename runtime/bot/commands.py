"""The commands and the buttons. A button calls the same function its text command calls.

Handlers only do the work: authorization, trace ids, logging and error replies live in handlers.py.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runtime.bot import render
from runtime.bot.context import Relay, Reply, Req
from runtime.bot.render import USAGE, Cb
from runtime.protocol import Api, Decision, ErrorKind, RelayError

CommandFn = Callable[[Relay, Req, str], Awaitable[None]]   # (relay, request, the text after the command)
ButtonFn = Callable[[Relay, Req, str], Awaitable[str]]     # (relay, request, callback argument) -> toast text


@dataclass(frozen=True)
class Command:
    name: str
    fn: CommandFn
    admin: bool


COMMANDS: dict[str, Command] = {}
BUTTONS: dict[str, ButtonFn] = {}


def command(name: str, admin: bool = False) -> Callable[[CommandFn], CommandFn]:
    def register(fn: CommandFn) -> CommandFn:
        COMMANDS[name] = Command(name, fn, admin)
        return fn
    return register


def button(prefix: Cb) -> Callable[[ButtonFn], ButtonFn]:
    def register(fn: ButtonFn) -> ButtonFn:
        BUTTONS[prefix.value] = fn
        return fn
    return register


@command("start")
@command("help")
async def help_(relay: Relay, req: Req, args: str) -> None:
    await relay.say(req, render.HELP)


# ---- nodes -------------------------------------------------------------------------------------

async def _servers(relay: Relay, req: Req) -> list[dict[str, Any]]:
    return list((await relay.manager.get(Api.SERVERS, req.trace_id)).get("servers") or [])


async def _show_nodes(relay: Relay, req: Req, edit: bool = False) -> None:
    text, markup = render.nodes(await _servers(relay, req), (await relay.chat(req)).get("node_id"))
    if edit and req.message_id is not None:
        await relay.delivery.edit(req.chat_id, req.message_id, text, markup, trace_id=req.trace_id)
    else:
        await relay.say(req, text, markup)


async def _select_node(relay: Relay, req: Req, node_id: str) -> str:
    # One node's status, not the whole listing: a fleet of thousands costs the same as one node.
    try:
        node = await relay.manager.post(Api.STATUS, req.trace_id, {"node_id": node_id})
    except RelayError as err:
        if err.kind != ErrorKind.NOT_FOUND:
            raise
        raise Reply(f"Unknown node {node_id}. /node lists the nodes.") from None
    if not node.get("online"):
        raise Reply(render.offline(node_id, node.get("last_seen")))
    await relay.manager.post(Api.CHAT_SELECT, req.trace_id, {"chat_key": req.chat_key, "node_id": node_id})
    return f"Node {node_id} selected for this chat."


@command("node")
async def node(relay: Relay, req: Req, args: str) -> None:
    if args:
        await relay.say(req, await _select_node(relay, req, args.split()[0]))
    else:
        await _show_nodes(relay, req)


@button(Cb.NODE)
async def node_button(relay: Relay, req: Req, node_id: str) -> str:
    text = await _select_node(relay, req, node_id)
    await _show_nodes(relay, req, edit=True)
    return text


@command("status")
async def status(relay: Relay, req: Req, args: str) -> None:
    node_id, chat = await relay.selected_node(req)
    state = await relay.manager.post(Api.STATUS, req.trace_id, {"node_id": node_id})
    if not state.get("online"):
        raise Reply(render.offline(node_id, state.get("last_seen")))
    await relay.say(req, render.status(state, chat))


# ---- tokens (admins) -----------------------------------------------------------------------------

def _token_fields(rest: str) -> dict[str, str] | None:
    """`[node=<id>] [note=<text>]`; the note runs to the end of the line, so it may hold spaces."""
    body: dict[str, str] = {}
    while rest:
        if rest.startswith("note="):
            body["note"] = rest.removeprefix("note=").strip()
            break
        word, _, rest = rest.partition(" ")
        rest = rest.strip()
        if not word.startswith("node=") or word == "node=":
            return None
        body["node_id"] = word.removeprefix("node=")
    return {k: v for k, v in body.items() if v}


@command("token", admin=True)
async def token(relay: Relay, req: Req, args: str) -> None:
    sub, _, rest = args.partition(" ")
    rest = rest.strip()
    if sub == "generate" and (fields := _token_fields(rest)) is not None:
        await relay.say(req, render.token_created(await relay.manager.post(Api.TOKENS, req.trace_id, fields)))
    elif sub == "list" and not rest:
        await relay.say(req, render.tokens(list((await relay.manager.get(Api.TOKENS, req.trace_id)).get("tokens") or [])))
    elif sub == "revoke" and rest and " " not in rest:
        done = await relay.manager.post(Api.TOKENS_REVOKE, req.trace_id, {"token_id": rest})
        closed = ", ".join(done.get("closed_sessions") or []) or "none"
        await relay.say(req, f"Token {rest} revoked; nodes using it can no longer connect. Sessions closed: {closed}.")
    else:
        raise Reply(USAGE["token"])


# ---- approvals -----------------------------------------------------------------------------------

@command("approve")
async def approve(relay: Relay, req: Req, args: str) -> None:
    parts = args.split()
    if not 1 <= len(parts) <= 2 or parts[1:] not in ([], ["session"]):
        raise Reply(USAGE["approve"])
    decision = Decision.ACCEPT_FOR_SESSION if parts[1:] else Decision.ACCEPT
    await relay.say(req, await relay.approvals.decide(req, parts[0], decision))


@command("decline")
async def decline(relay: Relay, req: Req, args: str) -> None:
    parts = args.split()
    if len(parts) != 1:
        raise Reply(USAGE["decline"])
    await relay.say(req, await relay.approvals.decide(req, parts[0], Decision.DECLINE))


@button(Cb.APPROVE)
async def approval_button(relay: Relay, req: Req, arg: str) -> str:
    approval_id, _, code = arg.rpartition(":")
    decision = next((d for d, c in render.DECISION_CODES.items() if c == code), None)
    if not approval_id or decision is None:
        raise Reply("This button is no longer valid; use /approve or /decline with the approval id.")
    return await relay.approvals.decide(req, approval_id, decision)


# ---- config --------------------------------------------------------------------------------------

CONFIG_EXAMPLE = '{"key_path": "model", "value": "gpt-5.5"}'
# Phone keyboards turn straight quotes into curly ones, which JSON does not accept.
STRAIGHTEN = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'"})


# Admins only: a config value can name programs codex runs (an MCP server, a notify command) on the node.
@command("config_value_write", admin=True)
async def config_value_write(relay: Relay, req: Req, args: str) -> None:
    if not args.strip():
        raise Reply(USAGE["config_value_write"])
    try:
        body = json.loads(args.translate(STRAIGHTEN))
    except json.JSONDecodeError as exc:
        raise Reply(f"Invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).\n"
                    f"Expected an object like {CONFIG_EXAMPLE}") from None
    if not isinstance(body, dict) or not isinstance(body.get("key_path"), str) or not body["key_path"] \
            or "value" not in body:
        raise Reply(f'Invalid request: the JSON must be an object with a string "key_path" and a "value".\n'
                    f"Expected an object like {CONFIG_EXAMPLE}")
    node_id, _ = await relay.selected_node(req)
    timeout = relay.config.appserver_timeout
    payload = {"node_id": node_id, "key_path": body["key_path"], "value": body["value"], "timeout": timeout}
    if isinstance(body.get("merge_strategy"), str):
        payload["merge_strategy"] = body["merge_strategy"]
    answer = await relay.manager.post(Api.CONFIG_VALUE_WRITE, req.trace_id, payload, timeout=timeout + 5)
    status_text = (answer.get("result") or {}).get("status", "ok")
    await relay.say(req, f"Wrote {body['key_path']} on {node_id}: {status_text}.")
