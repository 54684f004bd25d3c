"""Every text and button a user sees, in one place, so wording stays consistent and reviewable."""
from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from runtime.protocol import ApprovalState, Decision, ErrorKind, ReadyState, TaskAction, kind_of, user_error_line

MAX_CALLBACK_DATA = 64  # Telegram's limit, in bytes


class Cb(StrEnum):
    """callback_data prefixes: `<prefix>:<argument>`."""

    NODE = "node"
    MODEL = "model"
    EFFORT = "eff"
    THREAD = "thread"           # continue (resume) a thread in this chat
    THREAD_START = "tstart"     # open the /thread start wizard
    THREAD_READ = "tread"
    THREAD_FORK = "tfork"
    THREAD_ARCHIVE = "tarch"
    THREAD_UNARCHIVE = "tunarch"
    WIZARD = "tw"               # a step of the /thread start or fork wizard
    APPROVE = "ap"
    STOP = "stop"
    QUESTION = "qa"  # qa:<approval_id>:<question index>:<option index>


DECISION_CODES = {Decision.ACCEPT: "a", Decision.ACCEPT_FOR_SESSION: "s", Decision.DECLINE: "d", Decision.CANCEL: "c"}
DECISION_LABELS = {Decision.ACCEPT: "✅ Approve", Decision.ACCEPT_FOR_SESSION: "✅ Approve for session",
                   Decision.DECLINE: "❌ Decline", Decision.CANCEL: "⏹ Decline and stop the turn"}


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
/model [name] [effort]: list models, pick one and its reasoning effort for this chat
/thread: list threads and continue one here; /thread start makes one in a directory you pick
/thread current|read|fork|archive|unarchive|resume|new: more about threads (/thread help)
/stop: stop the turn running in this chat (or tap Stop under it)
/queue on|off: a message sent while a turn runs waits for it (on), or is added to it (off, the default)
/review: Codex reviews the uncommitted changes in the thread's folder
/compact: Codex summarizes the thread's history, to free its context
/file get <path>: a file from the thread's working directory, as a document
/diff: the working directory's changes (git diff) as a .patch document
/verbose 0|1|2: how much the progress message shows (1: also commands, files and tool calls; 2: also their output)
/result send|replace: post the final answer as a new message (notifies), or edit the progress message into it
/usage: the usage limits of Codex's login on the chat's node
/approve <approval_id> [session]: approve a pending request
/decline <approval_id>: decline a pending request
/config_value_write {"key_path": "...", "value": ...}: write a Codex config value on the node (admins)
/token generate|list|revoke: node tokens (admins)
/user add|remove|list: who may use this bot (admins)

Any other text is sent to Codex on the selected node. A document is saved in the thread's uploads folder (its
caption, if any, goes to Codex naming it); a photo goes to Codex as an image, with its caption as the prompt."""

USAGE = {
    "file": "Usage: /file get <path>\nSends a file from the thread's working directory (a path relative to it) as a "
            "document.",
    "token": "Usage:\n/token generate [node=<node_id>] [note=<text>]: create a node token (shown once)\n"
             "/token list: list tokens\n/token revoke <token_id>: revoke a token and cut off its nodes",
    "user": "Usage:\n/user add <user_id> [admin]: allow a Telegram user (as an admin with `admin`)\n"
            "/user remove <user_id>: take the bot away from a user\n/user list: who may use the bot",
    "approve": "Usage: /approve <approval_id> [session]\nApproves a pending request; add `session` to also allow "
               "the same command for the rest of the session.",
    "decline": "Usage: /decline <approval_id>\nDeclines a pending request; Codex is told and carries on without it.",
    "config_value_write": 'Usage: /config_value_write {"key_path": "model", "value": "gpt-5.5"}\n'
                          "Writes one value into the selected node's Codex config.",
    "verbose": "Usage: /verbose 0|1|2\n0: the agent's text; 1: also the commands, files and tool calls; 2: also "
               "their output, diffs and arguments.",
    "result": "Usage: /result send|replace\nsend: the final answer comes as a new message, so Telegram notifies; "
              "replace: the progress message is edited into it.",
    "queue": "Usage: /queue on|off\non: a message sent while a turn runs waits, and runs right after it.\n"
             "off (the default): it is added to the running turn, which takes it into account (steering).",
}


def unauthorized(user_id: int, what: str, admin_only: bool) -> str:
    """A refusal that names who may (runtime/bot/permissions.py says who), and what to do about it."""
    if admin_only:
        return f"unauthorized: {what} is for admins, and Telegram user {user_id} is not one. Ask an admin to do it."
    return (f"unauthorized: {what} is for allowed users and admins, and Telegram user {user_id} is neither. "
            f"Ask an admin to allow your user id: /user add {user_id}")


def slow_down(wait: int, limit: int, window: float) -> str:
    return (f"You are sending more than I can take: at most {limit} messages or button presses in {window:g} s. "
            f"Please try again in {wait} s; until then I skip what you send.")


STALE_BUTTON = "This button is no longer valid. Send the command again."
NO_NODE = "No node selected for this chat. Pick one with /node."
NO_NODES = "No nodes are registered yet. Create a token with /token generate and start a node with it."


def failure(what: str, kind: str, error: str | None = None) -> str:
    if kind == ErrorKind.CANCELLED:
        return STOPPED
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


READY_WORDS = {ReadyState.READY: "ready", ReadyState.NOT_LOGGED_IN: "not ready: codex is not logged in",
               ReadyState.PROVIDER_UNREACHABLE: "not ready: its model provider is unreachable",
               ReadyState.UNKNOWN: "readiness unknown"}


def ready_state(readiness: dict[str, Any] | None) -> ReadyState:
    try:
        return ReadyState((readiness or {}).get("state") or ReadyState.UNKNOWN)
    except ValueError:  # a state a newer node knows and this bot does not
        return ReadyState.UNKNOWN


def readiness(r: dict[str, Any] | None) -> list[str]:
    """A node's readiness for /status: the state, what the node found, and the fix."""
    state = ready_state(r)
    lines = [f"ready: {'yes' if state == ReadyState.READY else READY_WORDS[state].replace('not ready: ', 'no, ')}"]
    if state in (ReadyState.NOT_LOGGED_IN, ReadyState.PROVIDER_UNREACHABLE):
        lines += [f"found: {(r or {}).get('problem') or state.value}", f"fix: {kind_of(state.value).text}"]
    if (r or {}).get("codex_version"):
        lines.append(f"codex: {(r or {})['codex_version']}")
    return lines


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
        ready = ready_state(n.get("readiness"))
        if not n.get("online"):
            state, shown = f"offline, last seen {ago(n.get('last_seen'))}", "offline"
        elif ready in (ReadyState.READY, ReadyState.UNKNOWN):  # a listing names only what is wrong; /status says all
            state = shown = "online"
        else:
            state, shown = f"online, {READY_WORDS[ready]}", "online, not ready"
        mark = " ← selected" if n["node_id"] == selected else ""
        lines.append(f"• {n['node_id']}: {state}{mark}")
        if fits(Cb.NODE, n["node_id"]):
            label = f"{'✅ ' if mark else ''}{n['node_id']} ({shown})"
            rows.append([(label, callback(Cb.NODE, n["node_id"]))])
    if len(servers) > MAX_LISTED:
        online = sum(1 for n in servers if n.get("online"))
        lines.append(f"…and {len(servers) - MAX_LISTED} more ({len(servers)} nodes, {online} online). "
                     "Pick any by name: /node <node_id>")
    if not any(n.get("online") for n in servers):
        lines.append("No node is online right now: start one, or wait for it to reconnect.")
    if any(n.get("online") and ready_state(n.get("readiness")) not in (ReadyState.READY, ReadyState.UNKNOWN)
           for n in servers):
        lines.append("A node that is not ready fails every message at once: /status on it says what to fix.")
    return "\n".join(lines), keyboard(rows)


def status(s: dict[str, Any], chat: dict[str, Any]) -> str:
    thread = chat.get("threads", {}).get(s["node_id"])
    return "\n".join([f"Node {s['node_id']}: online", *readiness(s.get("readiness")),
                      f"version: {s.get('version') or 'unknown'}",
                      f"open tasks: {s.get('open_tasks', 0)}", f"last seen: {ago(s.get('last_seen'))}",
                      f"model: {chat.get('model') or 'node default'}",
                      "effort: " + (chat.get("effort") or "the model's default"),
                      f"thread: {thread or 'a new one starts with your next message'}"])


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


def users(rows: list[dict[str, Any]], admins: frozenset[int], allowed: frozenset[int], done: str = "") -> str:
    """Who may use the bot: the manager's users, and those the bot's settings allow (changed only there)."""
    lines = [done] if done else []
    lines.append("Users:")
    lines += [f"• {u['user_id']}: {u['role']}" for u in rows]
    lines += [f"• {u}: admin (bot settings)" for u in sorted(admins)]
    lines += [f"• {u}: user (bot settings)" for u in sorted(allowed - admins)]
    return "\n".join(lines)


INLINE_DIFF = 1500  # characters of diff shown in an approval prompt itself; a longer diff comes as a document


def diff_text(changes: list[dict[str, Any]]) -> str:
    """A file change's diffs as one patch-like text: codex gives an added or deleted file's content, and an
    updated file's unified diff."""
    out = []
    for c in changes:
        kind, diff = str(c.get("kind") or "update"), str(c.get("diff") or "")
        out.append(f"*** {kind}: {c.get('path')}")
        if kind in ("add", "delete"):
            mark = "+" if kind == "add" else "-"
            diff = "".join(f"{mark}{line}" for line in diff.splitlines(keepends=True))
        out.append(diff.rstrip("\n"))
    return "\n".join(out)


def approval_document(a: dict[str, Any]) -> tuple[str, bytes] | None:
    """A file change whose diff is too long for the prompt: the whole diff as a document (name, content)."""
    diff = diff_text(a.get("changes") or [])
    return (f"{a['approval_id']}.diff", diff.encode()) if len(diff) > INLINE_DIFF else None


def approval(a: dict[str, Any]) -> tuple[str, InlineKeyboardMarkup | None]:
    """The prompt: what codex wants to do, and one button per decision codex offers."""
    lines = [f"Approval needed on {a.get('node_id')} ({a.get('kind') or 'command'})"]
    changes = a.get("changes") or []
    if a.get("kind") == "file_change":
        lines.append("files:" if changes else "files: (codex did not say which)")
        lines += [f"• {c.get('path')} ({c.get('kind') or 'update'})" for c in changes]
    else:
        what = a.get("command")
        lines.append(f"command: {' '.join(map(str, what)) if isinstance(what, list) else what or '(none given)'}")
    lines += [f"{k}: {a[k]}" for k in ("cwd", "reason") if a.get(k)]
    if changes:
        diff = diff_text(changes)
        lines.append(f"diff:\n{diff}" if len(diff) <= INLINE_DIFF
                     else f"diff: {len(diff.splitlines())} lines, in the document {a['approval_id']}.diff above")
    lines.append(f"id: {a['approval_id']}")
    aid = a["approval_id"]
    offered = list(Decision) if a.get("decisions") is None else [Decision(d) for d in a["decisions"]]
    buttons = [(DECISION_LABELS[d], callback(Cb.APPROVE, aid, DECISION_CODES[d])) for d in offered]
    return "\n".join(lines), keyboard([buttons[:2], buttons[2:]])


def approval_outcome(original: str, state: str, decided_by: str | None, reason: str | None = None,
                     question: bool = False) -> str:
    if question:
        return question_outcome(original, state, decided_by, reason)
    if state == ApprovalState.EXPIRED:
        return f"{original}\n\n⌛ Expired: nobody decided in time, so Codex was told decline."
    if state == ApprovalState.WITHDRAWN:
        why = f" ({reason})" if reason else ""
        return f"{original}\n\n⏹ Withdrawn{why}: Codex no longer needs this decision; nothing was approved."
    verb = "✅ Approved" if state == ApprovalState.APPROVED else "❌ Declined"
    return f"{original}\n\n{verb} by {decided_by or 'someone'}."


def not_offered(error: str) -> str:
    return f"Not sent: {error}. Use one of the buttons on the prompt."


def already_decided(approval_id: str, error: str | None) -> str:
    return f"Already decided, nothing changed: {error or f'approval {approval_id} was decided earlier'}."


def placeholder(node_id: str, action: TaskAction = TaskAction.TURN) -> str:
    if action == TaskAction.REVIEW:
        return f"⏳ Reviewing the uncommitted changes on {node_id}…"
    if action == TaskAction.COMPACT:
        return f"⏳ Compacting this chat's thread on {node_id}…"
    return f"⏳ Working on it on {node_id}…"


def queued(node_id: str) -> str:
    return (f"⏳ Queued on {node_id}: a turn is running in this chat, and this message runs right after it. "
            "(/queue off adds messages to the running turn instead.)")


STEERED = ("↪️ Added to the running turn: Codex takes this message into account there, and that turn's answer "
           "answers both. (/queue on makes messages wait for the running turn instead.)")


def queue_mode(on: bool, changed: bool = False) -> str:
    head = "Queue mode is now" if changed else "Queue mode is"
    if on:
        return f"{head} on: a message sent while a turn runs waits, and runs right after it. /queue off to steer."
    return (f"{head} off: a message sent while a turn runs is added to that turn (steering). /queue on to make "
            "it wait instead.")


def no_thread(node_id: str, action: TaskAction) -> str:
    what = "review" if action == TaskAction.REVIEW else "compact"
    return (f"This chat has no Codex thread on {node_id} yet, so there is nothing to {what}. Send a message to "
            f"start one (or pick one with /thread), then /{action.value} again.")


def review(text: str) -> str:
    return f"🔍 Review of the uncommitted changes\n\n{text.strip() or 'Codex found nothing to report.'}"


COMPACTED = ("🗜 Compacted: Codex summarized this thread's history to free its context; your next message goes on "
             "from that summary.")


STOPPED = "⏹ Stopped. Codex was interrupted; send a new message to go on (the thread keeps what was done so far)."
NOTHING_TO_STOP = "Nothing to stop: no turn is running in this chat."


def stop_button(task_id: str) -> InlineKeyboardMarkup | None:
    return keyboard([[("⏹ Stop", callback(Cb.STOP, task_id))]])


def stopping(count: int) -> str:
    return f"⏹ Stopping {'the running turn' if count == 1 else f'{count} running turns'}…"


def notes(lines: list[str]) -> str:
    """What the node refused on the user's behalf during the turn, read after the answer."""
    return "\n".join(f"ℹ️ {line}" for line in lines)


# ---- the progress message: what codex is doing, at the chat's /verbose --------------------------------------

STEP_ICONS = {"command": "$", "files": "✏️", "tool": "🔧"}
STEP_MARKS = {"running": "…", "done": "✓", "failed": "✗", "declined": "(declined)"}
DETAILED_STEPS = 3     # at /verbose 2, the latest steps show their output, diff or arguments
MAX_PROGRESS = 4000    # the whole message, under Telegram's 4096


def steps(activity: list[dict[str, Any]], earlier: int, verbose: int) -> str:
    """The turn's steps, one line each (from /verbose 1); the latest with their details at /verbose 2."""
    if verbose < 1 or not activity:
        return ""
    lines = [f"… and {earlier} earlier steps"] if earlier else []
    for i, a in enumerate(activity):
        lines.append(f"{STEP_ICONS.get(str(a.get('kind')), '•')} {a.get('title')} "
                     f"{STEP_MARKS.get(str(a.get('status') or 'running'), '')}".rstrip())
        if verbose >= 2 and a.get("detail") and i >= len(activity) - DETAILED_STEPS:
            lines += [f"    {line}" for line in str(a["detail"]).splitlines()]
    return "\n".join(lines)


def progress(node_id: str, text: str, activity: list[dict[str, Any]] | None = None, earlier: int = 0,
             verbose: int = 0, notice: str | None = None) -> str:
    """The agent's latest text (its tail, if long) above the steps, then codex's latest retry notice
    ("reconnecting 2/5: ...") and that the turn still runs: the footer is never cut off."""
    footer = "\n\n".join([*([f"🔄 {notice}"] if notice else []), f"⏳ still working on {node_id}…"])
    shown = steps(activity or [], earlier, verbose)
    if not text.strip() and not shown and not notice:
        return placeholder(node_id)
    room = MAX_PROGRESS - len(shown) - len(footer) - 4  # the two blank lines between the three parts
    if room < 200:  # the steps alone would fill the message: they give way, from the oldest
        room = 200
        shown = "…" + shown[-(MAX_PROGRESS - len(footer) - 4 - room - 1):]
    text = text.strip()
    if len(text) > room:
        text = "…" + text[-(room - 1):]
    return "\n\n".join(part for part in (text, shown, footer) if part)


def finished(node_id: str, activity: list[dict[str, Any]], earlier: int, verbose: int, ok: bool) -> str:
    """The progress message once the outcome was posted below it (/result send): the steps stay as a record."""
    end = f"✅ Done on {node_id}; the answer is below." if ok else f"❌ The turn on {node_id} failed; see below."
    shown = steps(activity, earlier, min(verbose, 1))
    return f"{shown[-(MAX_PROGRESS - len(end) - 3):]}\n\n{end}" if shown else end


def usage(u: dict[str, Any]) -> str:
    """A turn's token usage, for the end of its answer."""
    parts = [f"in {u.get('input_tokens', 0):,}"]
    if u.get("cached_input_tokens"):
        parts[0] += f" ({u['cached_input_tokens']:,} cached)"
    parts.append(f"out {u.get('output_tokens', 0):,}")
    if u.get("reasoning_output_tokens"):
        parts[1] += f" ({u['reasoning_output_tokens']:,} reasoning)"
    line = f"🔢 {u.get('total_tokens', 0):,} tokens: {', '.join(parts)}"
    if u.get("context_window") and u.get("context_tokens") is not None:
        line += (f"; context {u['context_tokens']:,} of {u['context_window']:,} "
                 f"({100 * u['context_tokens'] / u['context_window']:.0f}%)")
    return line


VERBOSE_LEVELS = {0: "the agent's text only", 1: "the agent's text, with the commands it runs, the files it changes "
                  "and its tool calls", 2: "all of that, with their output, diffs and arguments"}
RESULT_MODES = {"send": "posted as a new message, so Telegram notifies you", "replace": "edited into the progress "
                "message (no notification)"}


def verbose_now(level: int, changed: bool = False) -> str:
    head = f"Verbosity {'set to' if changed else 'for this chat:'} {level}: the progress message shows "
    return head + VERBOSE_LEVELS[level] + "." + ("" if changed else "\n" + USAGE["verbose"].split("\n", 1)[0])


def result_now(mode: str, changed: bool = False) -> str:
    head = f"Result mode {'set to' if changed else 'for this chat:'} {mode}: the final answer is "
    return head + RESULT_MODES[mode] + "." + ("" if changed else "\n" + USAGE["result"].split("\n", 1)[0])


def _window(name: str, w: dict[str, Any] | None) -> str | None:
    if not w:
        return None
    mins = w.get("windowDurationMins")
    span = f" per {mins // 60} h" if mins and mins % 60 == 0 else f" per {mins} min" if mins else ""
    resets = f", resets {ago_until(w['resetsAt'])}" if w.get("resetsAt") else ""
    return f"• {name}{span}: {w.get('usedPercent', 0)}% used{resets}"


def ago_until(ts: float) -> str:
    secs = max(0, int(ts - time.time()))
    return f"in {secs // 60} min" if secs < 7200 else f"in {secs // 3600} h"


def rate_limits(node_id: str, answer: dict[str, Any]) -> str:
    """account/rateLimits/read: the login's limit windows, or that it reports none."""
    snap = answer.get("rateLimits") or {}
    lines = [w for w in (_window("primary limit", snap.get("primary")), _window("secondary limit",
                                                                               snap.get("secondary"))) if w]
    credits = snap.get("credits") or {}
    if credits.get("unlimited"):
        lines.append("• credits: unlimited")
    elif credits.get("hasCredits"):
        lines.append(f"• credits: {credits.get('balance') or 'some left'}")
    if not lines:
        return f"Codex on {node_id} reports no usage limits for its login."
    plan = f" (plan: {snap['planType']})" if snap.get("planType") else ""
    return "\n".join([f"Usage limits of Codex's login on {node_id}{plan}:", *lines])


def no_limits(node_id: str, why: str) -> str:
    return (f"This login has no usage limits to show: Codex on {node_id} is not signed in with a ChatGPT account "
            f"(it uses an API key or its own model provider), and only those have plan limits. Codex said: {why}")


def answer_document(task_id: str) -> str:
    return f"answer-{task_id}.md"


def answer_caption(chars: int, parts: int) -> str:
    return (f"The whole answer as a file: {chars:,} characters, which would take {parts} messages "
            "(the bot's answer_max_parts).")


# ---- questions codex asks the user (an approval of kind `question`) --------------------------------

def _questions(a: dict[str, Any]) -> list[dict[str, Any]]:
    return [q for q in a.get("questions") or [] if isinstance(q, dict)]


def takes_text(q: dict[str, Any]) -> bool:
    """A question accepts a typed answer when codex allows one ("Other"), or offers no options to tap."""
    return bool(q.get("isOther")) or not q.get("options")


def question(a: dict[str, Any], answers: dict[str, list[str]],
             closed: bool = False) -> tuple[str, InlineKeyboardMarkup | None]:
    """Codex's questions: each with its options as buttons (until answered, or `closed`), and what was answered."""
    asked = _questions(a)
    lines = [f"❓ Codex asks on {a.get('node_id')}:"]
    rows: list[list[tuple[str, str]]] = []
    typed = None
    for qi, q in enumerate(asked):
        lines.append("")
        lines.append(f"{q.get('header') or 'Question'}: {q.get('question') or ''}".strip())
        given = answers.get(str(q.get("id")))
        if given is not None:
            lines.append(f"→ {', '.join(given)}")
            continue
        if closed:
            lines += [f"• {o.get('label')}" for o in q.get("options") or []]
            continue
        for oi, option in enumerate(q.get("options") or []):
            label, about = str(option.get("label") or f"option {oi + 1}"), option.get("description")
            lines.append(f"• {label}" + (f": {about}" if about else ""))
            if fits(Cb.QUESTION, a["approval_id"], str(qi), str(oi)):
                rows.append([(label[:60], callback(Cb.QUESTION, a["approval_id"], str(qi), str(oi)))])
        if typed is None and takes_text(q):
            typed = q
    if typed is not None:
        about = typed.get("header") or "the question"
        lines += ["", f"Tap an option, or send your answer as a message (it answers \"{about}\")."
                  if typed.get("options") else "Send your answer as a message."]
    return "\n".join(lines), keyboard(rows)


def question_outcome(original: str, state: str, decided_by: str | None, reason: str | None = None) -> str:
    if state == ApprovalState.EXPIRED:
        return f"{original}\n\n⌛ Expired: nobody answered in time, so Codex went on without an answer."
    if state == ApprovalState.WITHDRAWN:
        why = f" ({reason})" if reason else ""
        return f"{original}\n\n⏹ Withdrawn{why}: Codex no longer waits for this answer."
    if state == ApprovalState.APPROVED:
        return f"{original}\n\n✅ Answered by {decided_by or 'someone'}; Codex has the answer."
    return f"{original}\n\n❌ Declined by {decided_by or 'someone'}: Codex got no answer."
