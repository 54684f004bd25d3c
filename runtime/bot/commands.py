"""The commands and the buttons. A button calls the same function its text command calls.

Handlers only do the work: authorization (by runtime/bot/permissions.py), trace ids, logging and error replies
live in handlers.py.
"""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runtime.bot import permissions, prefs, render
from runtime.bot.context import Relay, Reply, Req
from runtime.bot.permissions import Rule
from runtime.bot.render import USAGE, Cb
from runtime.protocol import Api, Decision, ErrorKind, RelayError, TaskAction

CommandFn = Callable[[Relay, Req, str], Awaitable[None]]   # (relay, request, the text after the command)
ButtonFn = Callable[[Relay, Req, str], Awaitable[str]]     # (relay, request, callback argument) -> toast text


@dataclass(frozen=True)
class Command:
    name: str
    fn: CommandFn
    rule: Rule


@dataclass(frozen=True)
class Button:
    prefix: Cb
    fn: ButtonFn
    rule: Rule


COMMANDS: dict[str, Command] = {}
BUTTONS: dict[str, Button] = {}


# Who may use each comes from the permission matrix alone: a command or button without a row there fails here.
def command(name: str) -> Callable[[CommandFn], CommandFn]:
    def register(fn: CommandFn) -> CommandFn:
        COMMANDS[name] = Command(name, fn, permissions.COMMANDS[name])
        return fn
    return register


def button(prefix: Cb) -> Callable[[ButtonFn], ButtonFn]:
    def register(fn: ButtonFn) -> ButtonFn:
        BUTTONS[prefix.value] = Button(prefix, fn, permissions.BUTTONS[prefix])
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


@command("token")
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


# ---- users (admins) ------------------------------------------------------------------------------

async def _set_user(relay: Relay, req: Req, user_id: str, role: str | None) -> list[dict[str, Any]]:
    if not user_id.isdigit() or int(user_id) < 1:
        raise Reply(f"Not a Telegram user id: {user_id}. " + USAGE["user"])
    users = await relay.manager.post(Api.USERS, req.trace_id, {"user_id": int(user_id), "role": role})
    relay.access.forget()  # seen by the next update, not after users_ttl
    return list(users.get("users") or [])


@command("user")
async def user(relay: Relay, req: Req, args: str) -> None:
    words = args.split()
    config = relay.config
    if words == ["list"]:
        users = list((await relay.manager.get(Api.USERS, req.trace_id)).get("users") or [])
        await relay.say(req, render.users(users, config.admin_users, config.allowed_users))
    elif len(words) in (2, 3) and words[0] == "add" and words[2:] in ([], ["admin"]):
        role = "admin" if words[2:] else "user"
        await relay.say(req, render.users(await _set_user(relay, req, words[1], role), config.admin_users,
                                          config.allowed_users, f"User {words[1]} may now use the bot as {role}."))
    elif len(words) == 2 and words[0] == "remove":
        if words[1].isdigit() and int(words[1]) in config.admin_users | config.allowed_users:
            raise Reply(f"User {words[1]} is allowed by the bot's settings (admin_users, allowed_users): "
                        "remove them there and restart the bot.")
        await relay.say(req, render.users(await _set_user(relay, req, words[1], None), config.admin_users,
                                          config.allowed_users, f"User {words[1]} may no longer use the bot."))
    else:
        raise Reply(USAGE["user"])


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


# ---- stopping a turn ------------------------------------------------------------------------------

async def _stop(relay: Relay, req: Req, task_id: str | None) -> str:
    """Through the manager, which checks the turn is this chat's (or the user an admin) and tells its node."""
    admin = await relay.access.role(req.user_id, req.trace_id) == permissions.ADMIN
    body: dict[str, Any] = {"chat_key": req.chat_key, "stopped_by": req.user_label, "admin": admin}
    if task_id is not None:
        body["task_id"] = task_id
    try:
        done = await relay.manager.post(Api.TASKS_STOP, req.trace_id, body)
    except RelayError as err:
        if err.kind == ErrorKind.NOT_FOUND:
            raise Reply(render.NOTHING_TO_STOP) from None
        if err.kind == ErrorKind.CONFLICT:
            raise Reply("That turn has already finished.") from None
        raise
    return render.stopping(len(done.get("stopping") or []))


@command("stop")
async def stop(relay: Relay, req: Req, args: str) -> None:
    await relay.say(req, await _stop(relay, req, None))


@button(Cb.STOP)
async def stop_button(relay: Relay, req: Req, task_id: str) -> str:
    return await _stop(relay, req, task_id)


@button(Cb.QUESTION)
async def question_button(relay: Relay, req: Req, arg: str) -> str:
    approval_id, _, indexes = arg.partition(":")
    q, _, o = indexes.partition(":")
    if not approval_id or not q.isdigit() or not o.isdigit():
        raise Reply(render.STALE_BUTTON)
    options = relay.approvals.options(approval_id, int(q))
    if not int(o) < len(options):
        raise Reply("This question is no longer open: Codex has its answer, or stopped waiting for one.")
    return await relay.approvals.answer(req, approval_id, int(q), options[int(o)])


# ---- the chat's session: queue or steer, review, compact -------------------------------------------

@command("queue")
async def queue(relay: Relay, req: Req, args: str) -> None:
    words = args.split()
    if not words:
        await relay.say(req, render.queue_mode(bool((await relay.chat(req)).get("queue"))))
        return
    if words not in (["on"], ["off"]):
        raise Reply(USAGE["queue"])
    chat = await relay.manager.post(Api.CHAT_SELECT, req.trace_id, {"chat_key": req.chat_key, "queue": words == ["on"]})
    await relay.say(req, render.queue_mode(bool(chat.get("queue")), changed=True))


async def _on_thread(relay: Relay, req: Req, action: TaskAction) -> None:
    """Codex's own turn (a review, a compaction) on the chat's thread; a chat without one is told to start it."""
    node_id, chat = await relay.selected_node(req)
    if not (chat.get("threads") or {}).get(node_id):
        raise Reply(render.no_thread(node_id, action))
    await relay.turns.start(req, node_id, f"/{action.value}", chat, action)


@command("review")
async def review(relay: Relay, req: Req, args: str) -> None:
    await _on_thread(relay, req, TaskAction.REVIEW)


@command("compact")
async def compact(relay: Relay, req: Req, args: str) -> None:
    await _on_thread(relay, req, TaskAction.COMPACT)


# ---- how the chat's turns are shown, and its node's usage limits (prefs.py) ----------------------------

command("verbose")(prefs.verbose)
command("result")(prefs.result)
command("usage")(prefs.usage)


# ---- config --------------------------------------------------------------------------------------

CONFIG_EXAMPLE = '{"key_path": "model", "value": "gpt-5.5"}'
# Phone keyboards turn straight quotes into curly ones, which JSON does not accept.
STRAIGHTEN = str.maketrans({"“": '"', "”": '"', "„": '"', "‘": "'", "’": "'"})


# Admins only: a config value can name programs codex runs (an MCP server, a notify command) on the node.
@command("config_value_write")
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
