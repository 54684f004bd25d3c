"""Every text and button a user sees, in one place, so wording stays consistent and reviewable."""
from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from runtime.protocol import ApprovalState, Decision, ErrorKind, user_error_line

MAX_CALLBACK_DATA = 64  # Telegram's limit, in bytes


class Cb(StrEnum):
    """callback_data prefixes: `<prefix>:<argument>`."""

    NODE = "node"
    MODEL = "model"
    THREAD = "thread"
    APPROVE = "ap"
    NEW_THREAD = "new"


DECISION_CODES = {Decision.ACCEPT: "a", Decision.ACCEPT_FOR_SESSION: "s", Decision.DECLINE: "d"}


def callback(prefix: Cb, *args: str) -> str:
    data = ":".join((prefix.value, *args))
    assert len(data.encode()) <= MAX_CALLBACK_DATA, f"callback_data over {MAX_CALLBACK_DATA} bytes: {data!r}"
    return data


def fits(prefix: Cb, *args: str) -> bool:
    return len(":".join((prefix.value, *args)).encode()) <= MAX_CALLBACK_DATA


def keyboard(rows: list[list[tuple[str, str]]]) -> InlineKeyboardMarkup | None:
    rows = [r for r in rows if r]
    if not rows:
        return None
    return InlineKeyboardMarkup([[InlineKeyboardButton(label, callback_data=data) for label, data in r] for r in rows])


HELP = """Codex Relay: drive Codex on your machines from here.

/node: list nodes and pick one for this chat
/status: the selected node's state
/model: list models and pick one for this chat
/thread: list threads, start a new one or switch
/approve <approval_id> [session]: approve a pending request
/decline <approval_id>: decline a pending request
/config_value_write {"key_path": "...", "value": ...}: write a Codex config value on the node (admins)
/token generate|list|revoke: node tokens (admins)

Any other text is sent to Codex on the selected node."""

USAGE = {
    "token": "Usage:\n/token generate [node=<node_id>] [note=<text>]: create a node token (shown once)\n"
             "/token list: list tokens\n/token revoke <token_id>: revoke a token and cut off its nodes",
    "approve": "Usage: /approve <approval_id> [session]\nApproves a pending request; add `session` to also allow "
               "the same command for the rest of the session.",
    "decline": "Usage: /decline <approval_id>\nDeclines a pending request; Codex is told and carries on without it.",
    "config_value_write": 'Usage: /config_value_write {"key_path": "model", "value": "gpt-5.5"}\n'
                          "Writes one value into the selected node's Codex config.",
}


def unauthorized(user_id: int, admin_only: bool = False) -> str:
    if admin_only:
        return f"unauthorized: this command is for admins, and Telegram user {user_id} is not one."
    return f"unauthorized: Telegram user {user_id} may not use this bot. Ask an admin to allow your user id."


STALE_BUTTON = "This button is no longer valid. Send the command again."
NO_NODE = "No node selected for this chat. Pick one with /node."
NO_NODES = "No nodes are registered yet. Create a token with /token generate and start a node with it."


def failure(what: str, kind: str, error: str | None = None) -> str:
    verb = "timed out" if kind == ErrorKind.TIMEOUT else "failed"
    return f"{what} {verb}: {user_error_line(kind, error)}"


def ago(ts: float | None) -> str:
    if not ts:
        return "never"
    secs = max(0, int(time.time() - ts))
    return f"{secs}s ago" if secs < 120 else f"{secs // 60}m ago" if secs < 7200 else f"{secs // 3600}h ago"


def offline(node_id: str, last_seen: float | None) -> str:
    return (f"Node {node_id} is offline (last seen {ago(last_seen)}). "
            "Wait for it to reconnect, or pick another node with /node.")


MAX_LISTED = 20  # a fleet of thousands would pass Telegram's 4096 characters and its keyboard limits


def _rank(node: dict[str, Any], selected: str | None) -> tuple[bool, bool, float, str]:
    """The selected node first, then online ones by node_id, then offline ones most recently seen first."""
    online = bool(node.get("online"))
    return node["node_id"] != selected, not online, 0.0 if online else -float(node.get("last_seen") or 0), node["node_id"]


def nodes(servers: list[dict[str, Any]], selected: str | None) -> tuple[str, InlineKeyboardMarkup | None]:
    if not servers:
        return NO_NODES, None
    lines, rows = ["Nodes (tap one to use it in this chat):"], []
    for n in sorted(servers, key=lambda n: _rank(n, selected))[:MAX_LISTED]:
        state = "online" if n.get("online") else f"offline, last seen {ago(n.get('last_seen'))}"
        mark = " ← selected" if n["node_id"] == selected else ""
        lines.append(f"• {n['node_id']}: {state}{mark}")
        if fits(Cb.NODE, n["node_id"]):
            label = f"{'✅ ' if mark else ''}{n['node_id']} ({'online' if n.get('online') else 'offline'})"
            rows.append([(label, callback(Cb.NODE, n["node_id"]))])
    if len(servers) > MAX_LISTED:
        online = sum(1 for n in servers if n.get("online"))
        lines.append(f"…and {len(servers) - MAX_LISTED} more ({len(servers)} nodes, {online} online). "
                     "Pick any by name: /node <node_id>")
    if not any(n.get("online") for n in servers):
        lines.append("No node is online right now: start one, or wait for it to reconnect.")
    return "\n".join(lines), keyboard(rows)


def status(s: dict[str, Any], chat: dict[str, Any]) -> str:
    thread = chat.get("threads", {}).get(s["node_id"])
    return "\n".join([f"Node {s['node_id']}: online", f"version: {s.get('version') or 'unknown'}",
                      f"open tasks: {s.get('open_tasks', 0)}", f"last seen: {ago(s.get('last_seen'))}",
                      f"model: {chat.get('model') or 'node default'}",
                      f"thread: {thread or 'a new one starts with your next message'}"])


def models(data: list[dict[str, Any]], current: str | None) -> tuple[str, InlineKeyboardMarkup | None]:
    lines, rows = [f"Model for this chat: {current or 'node default'}. Tap one to switch:"], []
    for m in data:
        mid = str(m.get("id") or m.get("model"))
        lines.append(f"• {mid}{' ← selected' if mid == current else ''}: {m.get('description') or ''}".rstrip(": "))
        if fits(Cb.MODEL, mid):
            rows.append([(("✅ " if mid == current else "") + str(m.get("displayName") or mid), callback(Cb.MODEL, mid))])
    return "\n".join(lines), keyboard(rows)


def threads(data: list[dict[str, Any]], current: str | None, node_id: str) -> tuple[str, InlineKeyboardMarkup | None]:
    lines = [f"Threads on {node_id}; this chat uses: {current or 'a new thread (starts with your next message)'}"]
    rows = [[("🆕 New thread", callback(Cb.THREAD, Cb.NEW_THREAD))]]
    for t in data[:20]:
        tid, preview = str(t.get("id")), " ".join(str(t.get("preview") or "").split())[:40]
        lines.append(f"• {tid}{' ← selected' if tid == current else ''}: {preview or '(no preview)'}")
        if fits(Cb.THREAD, tid):
            rows.append([(("✅ " if tid == current else "") + (preview or tid)[:40], callback(Cb.THREAD, tid))])
    if not data:
        lines.append("No threads yet: your next message starts one.")
    return "\n".join(lines), keyboard(rows)


def token_created(t: dict[str, Any]) -> str:
    return (f"token created\ntoken_id: {t['token_id']}\nnode: {t.get('node_id') or 'any node_id'}\n"
            f"note: {t.get('note') or '-'}\ntoken: {t['token']}\n"
            "This is the only time the token is shown: give it to the node now (CODEX_NODE_TOKEN).")


def tokens(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No tokens yet. Create one with /token generate."
    lines = ["Tokens:"]
    for t in rows:
        state = f"revoked {ago(t['revoked_at'])}" if t.get("revoked_at") else "active"
        note = f", note: {t['note']}" if t.get("note") else ""
        lines.append(f"• {t['token_id']}: node {t.get('node_id') or 'any'}, {state}{note}")
    return "\n".join(lines)


def approval(a: dict[str, Any]) -> tuple[str, InlineKeyboardMarkup | None]:
    what = a.get("command")
    if isinstance(what, list):
        what = " ".join(map(str, what))
    if not what:
        what = "a file change" if a.get("kind") == "file_change" else "(none given)"
    lines = [f"Approval needed on {a.get('node_id')} ({a.get('kind') or 'command'})", f"command: {what}"]
    lines += [f"{k}: {a[k]}" for k in ("cwd", "reason") if a.get(k)]
    lines.append(f"id: {a['approval_id']}")
    aid = a["approval_id"]
    return "\n".join(lines), keyboard([[("✅ Approve", callback(Cb.APPROVE, aid, DECISION_CODES[Decision.ACCEPT])),
                                        ("❌ Decline", callback(Cb.APPROVE, aid, DECISION_CODES[Decision.DECLINE]))],
                                       [("✅ Approve for session",
                                         callback(Cb.APPROVE, aid, DECISION_CODES[Decision.ACCEPT_FOR_SESSION]))]])


def approval_outcome(original: str, state: str, decided_by: str | None) -> str:
    if state == ApprovalState.EXPIRED:
        return f"{original}\n\n⌛ Expired: nobody decided in time, so Codex was told decline."
    verb = "✅ Approved" if state == ApprovalState.APPROVED else "❌ Declined"
    return f"{original}\n\n{verb} by {decided_by or 'someone'}."


def already_decided(approval_id: str, error: str | None) -> str:
    return f"Already decided, nothing changed: {error or f'approval {approval_id} was decided earlier'}."


def placeholder(node_id: str) -> str:
    return f"⏳ Working on it on {node_id}…"


def progress(node_id: str, text: str, limit: int = 4096) -> str:
    """The answer so far, its newest end if it is long, so the "still working" line is never cut off."""
    suffix = f"\n\n⏳ still working on {node_id}…"
    body = text.strip()
    if len(body) + len(suffix) > limit:
        body = "…" + body[len(body) - (limit - len(suffix) - 1):]
    return body + suffix if body else placeholder(node_id)


def answer_document(task_id: str) -> str:
    return f"answer-{task_id}.md"


def answer_caption(chars: int, parts: int) -> str:
    return (f"The whole answer as a file: {chars:,} characters, which would take {parts} messages "
            "(the bot's answer_max_parts).")
