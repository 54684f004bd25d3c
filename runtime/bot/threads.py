"""/thread and its buttons: each subcommand does what codex's method of that name does on the chat's node
(`thread/list`, `thread/resume`, `thread/read`, `thread/archive`, `thread/unarchive`, `thread/fork`), and the
chat's binding to a thread is kept by the manager. `start` and `fork` are wizards (wizard.py).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from runtime.bot import render_threads as rt, wizard
from runtime.bot.commands import button, command
from runtime.bot.context import Relay, Reply, Req
from runtime.bot.render import Cb
from runtime.protocol import Api, RelayError

Sub = Callable[[Relay, Req, str], Awaitable[None]]


async def _binding(relay: Relay, req: Req) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The chat's node, its route, and its thread there with the thread's settings ({} when it has none)."""
    node_id, chat = await relay.selected_node(req)
    return node_id, chat, (chat.get("bindings") or {}).get(node_id) or {}


async def _edit_or_say(relay: Relay, req: Req, text: str, markup: Any = None) -> None:
    """A button's outcome replaces the listing it was on, so a stale list cannot be tapped again."""
    if req.message_id is not None and req.query_id is not None:
        await relay.delivery.edit(req.chat_id, req.message_id, text, markup, trace_id=req.trace_id)
    else:
        await relay.say(req, text, markup)


# ---- listing ---------------------------------------------------------------------------------------

async def _listing(relay: Relay, req: Req, action: Cb, archived: bool = False) -> None:
    node_id, _, binding = await _binding(relay, req)
    params = {"archived": True} if archived else {}
    listed = await relay.appserver(req, node_id, "thread/list", params) or {}
    await relay.say(req, *rt.threads(list(listed.get("data") or []), binding.get("thread_id"), node_id, action,
                                     archived))


async def list_(relay: Relay, req: Req, rest: str) -> None:
    await _listing(relay, req, Cb.THREAD)


# ---- resume: continue a thread in this chat ----------------------------------------------------------

async def _resume(relay: Relay, req: Req, thread_id: str) -> str:
    """thread/resume on the chat's node, then the chat continues that thread. Codex restores a thread's cwd and
    approvals, not its sandbox: the chat's own thread is resumed with the settings it was started with."""
    node_id, _, binding = await _binding(relay, req)
    own = {k: binding[k] for k in ("sandbox", "approval_policy") if binding.get("thread_id") == thread_id
           and binding.get(k)}
    params = {"threadId": thread_id, "excludeTurns": True,
              **({"sandbox": own["sandbox"]} if "sandbox" in own else {}),
              **({"approvalPolicy": own["approval_policy"]} if "approval_policy" in own else {})}
    resumed = await relay.appserver(req, node_id, "thread/resume", params) or {}
    cwd = resumed.get("cwd") or (resumed.get("thread") or {}).get("cwd")
    await relay.manager.post(Api.CHAT_SELECT, req.trace_id, {"chat_key": req.chat_key, "thread_id": thread_id,
                                                             **({"cwd": cwd} if cwd else {}), **own})
    return rt.resumed(thread_id, node_id, cwd)


async def resume(relay: Relay, req: Req, rest: str) -> None:
    if not rest:
        await _listing(relay, req, Cb.THREAD)
    else:
        await relay.say(req, await _resume(relay, req, rest.split()[0]))


@button(Cb.THREAD)
async def resume_button(relay: Relay, req: Req, thread_id: str) -> str:
    text = await _resume(relay, req, thread_id)
    await _edit_or_say(relay, req, text)
    return text


# ---- current and read ------------------------------------------------------------------------------

async def current(relay: Relay, req: Req, rest: str) -> None:
    node_id, chat, binding = await _binding(relay, req)
    status = await relay.manager.post(Api.STATUS, req.trace_id, {"node_id": node_id})
    thread = None
    if binding:
        try:  # what codex knows of it (its name, its cwd) is a bonus: the binding is the manager's
            thread = (await relay.appserver(req, node_id, "thread/read", {"threadId": binding["thread_id"]}) or {}
                      ).get("thread")
        except RelayError:
            thread = None
    await relay.say(req, *rt.current(node_id, chat, status.get("cwd"), thread))


async def _read(relay: Relay, req: Req, thread_id: str) -> str:
    node_id, _, _ = await _binding(relay, req)
    # Metadata and a page of turns: asking thread/read for the whole history is deprecated in codex 0.171.
    read = await relay.appserver(req, node_id, "thread/read", {"threadId": thread_id}) or {}
    try:
        turns = await relay.appserver(req, node_id, "thread/turns/list", {"threadId": thread_id,
                                                                           "limit": rt.READ_TURNS}) or {}
    except RelayError as err:
        if not wizard.no_turns_yet(err):
            raise
        turns = {}  # a thread without a turn yet
    return rt.read(read.get("thread") or {"id": thread_id}, list(turns.get("data") or []), node_id)


async def read(relay: Relay, req: Req, rest: str) -> None:
    _, _, binding = await _binding(relay, req)
    thread_id = rest.split()[0] if rest else binding.get("thread_id")
    if not thread_id:
        await _listing(relay, req, Cb.THREAD_READ)
        return
    await relay.say(req, await _read(relay, req, thread_id))


@button(Cb.THREAD_READ)
async def read_button(relay: Relay, req: Req, thread_id: str) -> str:
    await relay.say(req, await _read(relay, req, thread_id))
    return f"Thread {thread_id}"


# ---- archive and unarchive ---------------------------------------------------------------------------

async def _archive(relay: Relay, req: Req, thread_id: str) -> str:
    node_id, _, binding = await _binding(relay, req)
    await relay.appserver(req, node_id, "thread/archive", {"threadId": thread_id})
    # Codex no longer finds an archived thread: a chat left on it would fail its next turn.
    unbind = binding.get("thread_id") == thread_id
    if unbind:
        await relay.manager.post(Api.CHAT_SELECT, req.trace_id, {"chat_key": req.chat_key, "thread_id": None})
    return rt.archived(thread_id, node_id, unbind)


async def archive(relay: Relay, req: Req, rest: str) -> None:
    if not rest:
        await _listing(relay, req, Cb.THREAD_ARCHIVE)
    else:
        await relay.say(req, await _archive(relay, req, rest.split()[0]))


@button(Cb.THREAD_ARCHIVE)
async def archive_button(relay: Relay, req: Req, thread_id: str) -> str:
    text = await _archive(relay, req, thread_id)
    await _edit_or_say(relay, req, text)
    return text


async def _unarchive(relay: Relay, req: Req, thread_id: str) -> tuple[str, Any]:
    node_id, _, _ = await _binding(relay, req)
    await relay.appserver(req, node_id, "thread/unarchive", {"threadId": thread_id})
    return rt.unarchived(thread_id, node_id)


async def unarchive(relay: Relay, req: Req, rest: str) -> None:
    if not rest:
        await _listing(relay, req, Cb.THREAD_UNARCHIVE, archived=True)
    else:
        await relay.say(req, *await _unarchive(relay, req, rest.split()[0]))


@button(Cb.THREAD_UNARCHIVE)
async def unarchive_button(relay: Relay, req: Req, thread_id: str) -> str:
    text, markup = await _unarchive(relay, req, thread_id)
    await _edit_or_say(relay, req, text, markup)
    return text


# ---- start, fork, new ------------------------------------------------------------------------------

async def start(relay: Relay, req: Req, rest: str) -> None:
    await wizard.start(relay, req)


@button(Cb.THREAD_START)
async def start_button(relay: Relay, req: Req, arg: str) -> str:
    await wizard.start(relay, req)
    return "New thread: pick its node."


async def fork(relay: Relay, req: Req, rest: str) -> None:
    await wizard.fork(relay, req, rest.split()[0] if rest else None)


@button(Cb.THREAD_FORK)
async def fork_button(relay: Relay, req: Req, thread_id: str) -> str:
    await wizard.fork(relay, req, thread_id)
    return f"Fork {thread_id}: pick its directory."


@button(Cb.WIZARD)
async def wizard_button(relay: Relay, req: Req, arg: str) -> str:
    return await wizard.choose(relay, req, arg)


async def new(relay: Relay, req: Req, rest: str) -> None:
    node_id, _ = await relay.selected_node(req)
    await relay.manager.post(Api.CHAT_SELECT, req.trace_id, {"chat_key": req.chat_key, "thread_id": None})
    await relay.say(req, rt.fresh_thread(node_id))


async def help_(relay: Relay, req: Req, rest: str) -> None:
    await relay.say(req, rt.USAGE)


SUBCOMMANDS: dict[str, Sub] = {"": list_, "list": list_, "start": start, "resume": resume, "current": current,
                               "read": read, "archive": archive, "unarchive": unarchive, "fork": fork, "new": new,
                               "help": help_}


@command("thread")
async def thread(relay: Relay, req: Req, args: str) -> None:
    sub, _, rest = args.partition(" ")
    if (fn := SUBCOMMANDS.get(sub)) is not None:
        await fn(relay, req, rest.strip())
    elif sub and not rest.strip():
        await relay.say(req, await _resume(relay, req, sub))  # `/thread <id>`: as `/thread resume <id>`
    else:
        raise Reply(rt.USAGE)
