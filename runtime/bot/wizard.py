"""/thread start and /thread fork: a short wizard of buttons (a typed path allowed) that makes a thread on a node
through codex (`thread/start`, `thread/fork`) and binds it to the chat. The node judges the directory.

A draft lives in the bot's memory: a wizard is a minute's work, and after a restart its buttons say it is closed,
so nothing half-chosen lingers. What it makes (the thread and its settings) is kept by the manager.
"""
from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

from runtime.bot import render, render_threads as rt
from runtime.bot import permissions
from runtime.bot.context import Relay, Reply, Req
from runtime.protocol import Api, ErrorKind, RelayError
from runtime.protocol.wire import APPROVAL_POLICIES, SANDBOX_MODES

WIZARD_TTL: Final = 900.0   # seconds a draft stays open
MAX_DRAFTS: Final = 1000    # open at once across chats; the oldest is dropped past it
MAX_NODES: Final = 20       # online nodes offered as buttons
# S-01's permission matrix: what only an admin may choose in a wizard (every other choice is any user's).
# Sandboxes only an admin may pick: the permission matrix's choices (runtime/bot/permissions.py).
ADMIN_SANDBOXES: Final = frozenset(name.removeprefix("sandbox ") for name, rule in permissions.CHOICES.items()
                                   if name.startswith("sandbox ") and rule.who == permissions.ADMIN)
STEPS: Final = ("node", "sandbox", "approval", "dir")
# What codex 0.171 says of a thread that has had no turn yet (it has written nothing for it), by method.
NO_TURNS_YET: Final = ("no rollout found", "not materialized yet")


def no_turns_yet(err: RelayError) -> bool:
    return any(marker in err.error for marker in NO_TURNS_YET)


@dataclass
class Draft:
    user_id: int
    node_id: str | None = None
    fork_of: str | None = None                                # the thread to fork; None starts a new one
    settings: dict[str, str] = field(default_factory=dict)    # sandbox and approval_policy chosen so far
    step: str = "node"
    options: list[str] = field(default_factory=list)          # what the current step's buttons stand for
    node_cwd: str = ""
    roots: list[str] = field(default_factory=list)
    message_id: int | None = None
    wid: str = field(default_factory=lambda: secrets.token_hex(3))  # in every button: a replaced draft's are stale
    opened: float = field(default_factory=time.monotonic)


class Wizards:
    """The open drafts, one per chat (a new /thread start replaces the chat's), bounded in count and age."""

    def __init__(self) -> None:
        self._drafts: OrderedDict[str, Draft] = OrderedDict()

    def open(self, chat_key: str, draft: Draft) -> None:
        self._drafts.pop(chat_key, None)
        self._drafts[chat_key] = draft
        while len(self._drafts) > MAX_DRAFTS:
            self._drafts.popitem(last=False)

    def get(self, chat_key: str) -> Draft | None:
        draft = self._drafts.get(chat_key)
        if draft is not None and time.monotonic() - draft.opened > WIZARD_TTL:
            del self._drafts[chat_key]
            return None
        return draft

    def close(self, chat_key: str, draft: Draft) -> None:
        if self._drafts.get(chat_key) is draft:
            del self._drafts[chat_key]

    def awaiting_path(self, req: Req) -> Draft | None:
        """The draft this user's plain text answers: one of theirs that asks for a directory."""
        draft = self.get(req.chat_key)
        return draft if draft is not None and draft.step == "dir" and draft.user_id == req.user_id else None


# ---- opening ---------------------------------------------------------------------------------------

async def start(relay: Relay, req: Req) -> None:
    """/thread start: step one, the node (the chat's own first)."""
    listed = await relay.manager.get(Api.SERVERS, req.trace_id, online="true", limit=str(MAX_NODES))
    nodes = [str(n["node_id"]) for n in listed.get("servers") or []]
    if not nodes:
        raise Reply(rt.NO_NODES_ONLINE)
    mine = (await relay.chat(req)).get("node_id")
    draft = Draft(req.user_id, options=sorted(nodes, key=lambda n: (n != mine, n)))
    await _show(relay, req, draft)


async def fork(relay: Relay, req: Req, thread_id: str | None) -> None:
    """/thread fork: only the directory is asked; the fork keeps the sandbox and approvals of the chat's thread."""
    node_id, chat = await relay.selected_node(req)
    binding = (chat.get("bindings") or {}).get(node_id) or {}
    source = thread_id or binding.get("thread_id")
    if not source:
        raise Reply(rt.NO_THREAD)
    own = source == binding.get("thread_id")
    draft = Draft(req.user_id, node_id=node_id, fork_of=source, step="dir",
                  settings={k: binding[k] for k in ("sandbox", "approval_policy") if own and binding.get(k)})
    await _enter_dir(relay, req, draft, first=binding.get("cwd") if own else None)
    await _show(relay, req, draft)


async def _show(relay: Relay, req: Req, draft: Draft) -> None:
    """The step as a new message (a wizard's first) or an edit of the wizard's message."""
    text, markup = rt.wizard_step(draft)
    if draft.message_id is None:
        # Open before the message is out: a user may tap its button before the send's answer reaches the bot.
        relay.wizards.open(req.chat_key, draft)
        sent = await relay.say(req, text, markup)
        draft.message_id = sent.message_id if sent else None
    else:
        await relay.delivery.edit(req.chat_id, draft.message_id, text, markup, trace_id=req.trace_id)


async def _enter_dir(relay: Relay, req: Req, draft: Draft, first: str | None = None) -> None:
    """The directory step: the node's cwd and allowed roots (as the node reported them) are the buttons."""
    assert draft.node_id is not None
    try:
        status = await relay.manager.post(Api.STATUS, req.trace_id, {"node_id": draft.node_id})
    except RelayError as err:
        if err.kind != ErrorKind.NOT_FOUND:
            raise
        raise Reply(f"Unknown node {draft.node_id}. /node lists the nodes.") from None
    if not status.get("online"):
        raise Reply(render.offline(draft.node_id, status.get("last_seen")))
    draft.node_cwd = str(status.get("cwd") or "")
    draft.roots = [str(r) for r in status.get("allowed_roots") or []]
    if not draft.roots:  # a node older than allowed_roots would not check the directory itself
        raise Reply(rt.NO_ROOTS.format(node_id=draft.node_id))
    draft.step = "dir"
    draft.options = list(dict.fromkeys(p for p in (first, draft.node_cwd, *draft.roots) if p))


# ---- choosing ----------------------------------------------------------------------------------------

async def choose(relay: Relay, req: Req, arg: str) -> str:
    """A wizard button: `<wid>:<step>:<index>`. Returns the toast."""
    wid, step, index = (arg.split(":") + ["", ""])[:3]
    draft = relay.wizards.get(req.chat_key)
    if draft is None or draft.wid != wid or (step != "cancel" and step != draft.step):
        raise Reply(rt.WIZARD_CLOSED)
    if draft.user_id != req.user_id:
        raise Reply(rt.WIZARD_NOT_YOURS)
    if step == "cancel":
        relay.wizards.close(req.chat_key, draft)
        if draft.message_id is not None:
            await relay.delivery.edit(req.chat_id, draft.message_id, rt.WIZARD_CANCELLED, None, trace_id=req.trace_id)
        return rt.WIZARD_CANCELLED
    if not index.isdigit() or int(index) >= len(draft.options):
        raise Reply(rt.WIZARD_CLOSED)
    choice = draft.options[int(index)]
    if step == "dir":
        try:
            return (await _make(relay, req, draft, choice)).splitlines()[0]  # the wizard's message shows the rest
        except RelayError as err:
            raise Reply(render.failure(_what(draft), err.kind, err.error)) from None
    if step == "node":
        draft.node_id, draft.step = choice, "sandbox"
        draft.options = [m for m in SANDBOX_MODES if m not in ADMIN_SANDBOXES or await _is_admin(relay, req)]
    elif step == "sandbox":
        if choice in ADMIN_SANDBOXES and not await _is_admin(relay, req):
            raise Reply(rt.ADMIN_SANDBOX.format(sandbox=choice))
        draft.settings["sandbox"], draft.step, draft.options = choice, "approval", list(APPROVAL_POLICIES)
    elif step == "approval":
        draft.settings["approval_policy"] = choice
        await _enter_dir(relay, req, draft)
    await _show(relay, req, draft)
    return f"{step}: {choice}"


def path_like(text: str) -> bool:
    """Whether a message reads as a directory rather than words for Codex: one line, and absolute, home- or
    dot-relative, or with a slash and no space."""
    text = text.strip()
    return bool(text) and "\n" not in text and (text.startswith(("/", "~", ".")) or ("/" in text and " " not in text))


async def take_text(relay: Relay, req: Req, text: str) -> bool:
    """A message while this user's wizard asks for a directory: a path is that directory (True: handled). Anything
    else closes the wizard and goes to Codex as usual, so an abandoned wizard never swallows a prompt."""
    draft = relay.wizards.awaiting_path(req)
    if draft is None:
        return False
    if not path_like(text):
        relay.wizards.close(req.chat_key, draft)
        if draft.message_id is not None:
            await relay.delivery.edit(req.chat_id, draft.message_id, rt.WIZARD_ABANDONED, None, trace_id=req.trace_id)
        return False
    try:
        made = await _make(relay, req, draft, text.strip())
    except RelayError as err:  # named as the wizard's, whichever handler the text came through
        raise Reply(render.failure(_what(draft), err.kind, err.error)) from None
    await relay.say(req, made)
    return True


def _what(draft: Draft) -> str:
    return "Forking the thread" if draft.fork_of else "Starting the thread"


async def _is_admin(relay: Relay, req: Req) -> bool:
    return await relay.access.role(req.user_id, req.trace_id) >= permissions.ADMIN


async def _make(relay: Relay, req: Req, draft: Draft, cwd: str) -> str:
    """thread/start or thread/fork in `cwd` on the node, which refuses a directory outside its roots; then the
    chat is bound to the new thread with its settings. A refused directory leaves the wizard open for another."""
    assert draft.node_id is not None
    settings = {"sandbox": draft.settings.get("sandbox"), "approvalPolicy": draft.settings.get("approval_policy")}
    params: dict[str, Any] = {"cwd": cwd, **{k: v for k, v in settings.items() if v}}
    if draft.fork_of:
        params |= {"threadId": draft.fork_of, "excludeTurns": True}
    what = _what(draft)
    draft.step = "making"  # a second tap or path meanwhile finds the wizard busy, so one wizard makes one thread
    try:
        made = await relay.appserver(req, draft.node_id, "thread/fork" if draft.fork_of else "thread/start", params)
    except RelayError as err:
        draft.step = "dir"
        if draft.fork_of and no_turns_yet(err):
            relay.wizards.close(req.chat_key, draft)  # no other directory would do better
            raise Reply(rt.NOTHING_TO_FORK.format(thread_id=draft.fork_of)) from None
        if err.kind != ErrorKind.PATH_NOT_ALLOWED:
            raise
        raise Reply(rt.dir_refused(render.failure(what, err.kind, err.error))) from None
    thread = (made or {}).get("thread") or {}
    thread_id, real_cwd = str(thread.get("id")), str((made or {}).get("cwd") or thread.get("cwd") or cwd)
    relay.wizards.close(req.chat_key, draft)
    await relay.manager.post(Api.CHAT_SELECT, req.trace_id, {
        "chat_key": req.chat_key, "node_id": draft.node_id, "thread_id": thread_id, "cwd": real_cwd,
        **{k: v for k, v in draft.settings.items() if v}})
    text = rt.created(draft, thread_id, real_cwd)
    if draft.message_id is not None:
        await relay.delivery.edit(req.chat_id, draft.message_id, text, None, trace_id=req.trace_id)
    return text
