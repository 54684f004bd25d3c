"""The texts and buttons of /thread, its wizard, and /model: everything a user reads about threads and models."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from telegram import InlineKeyboardMarkup

from runtime.bot.render import Cb, callback, fits, keyboard

if TYPE_CHECKING:
    from runtime.bot.wizard import Draft

MAX_LISTED = 20     # threads and models in one listing: Telegram's 4096 characters and its keyboard limits
READ_TURNS = 5      # /thread read shows this many of the last turns
ITEM_CHARS = 600    # of one message in /thread read
READ_CHARS = 3800   # of the whole /thread read, under Telegram's 4096

USAGE = """Usage:
/thread or /thread list: this node's threads; tap one to continue it here
/thread start: a new thread: node, sandbox, approvals and working directory, by buttons
/thread resume <id>: continue a thread in this chat
/thread current: this chat's thread and its settings
/thread read [id]: the last turns of a thread (this chat's by default)
/thread fork [id]: a copy of a thread (this chat's by default) in a directory you pick
/thread archive [id] and /thread unarchive [id]: put a thread away, or bring it back
/thread new: your next message starts a thread with the node's defaults"""

MODEL_USAGE = ("Usage: /model [name] [effort]\n/model lists the node's models; /model <name> picks one, /model <name> "
               "<effort> also a reasoning effort, /model default goes back to the node's defaults.")

SANDBOX_LABELS = {"read-only": "read-only: reads files, changes nothing",
                  "workspace-write": "workspace-write: may change files in its directory",
                  "danger-full-access": "danger-full-access: anything, anywhere (admins)"}
APPROVAL_LABELS = {"untrusted": "untrusted: asks before most commands",
                   "on-request": "on-request: asks when it needs more rights",
                   "never": "never: never asks"}
WIZARD_STEPS = {"node": "which node?", "sandbox": "the sandbox: what may Codex touch?",
                "approval": "approvals: when does Codex ask you first?",
                "dir": "the working directory. Tap one, or send its path (/…, ~/… or ./…) as a message"}
ITEM_MARKS = {"userMessage": "👤", "agentMessage": "🤖"}


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _short_path(path: str, limit: int = 40) -> str:
    return path if len(path) <= limit else "…" + path[-(limit - 1):]


def _or_default(value: str | None, default: str = "the node's default") -> str:
    return value or default


# ---- /thread --------------------------------------------------------------------------------------

def threads(data: list[dict[str, Any]], current: str | None, node_id: str, action: Cb = Cb.THREAD,
            archived: bool = False) -> tuple[str, InlineKeyboardMarkup | None]:
    """A node's threads, each a button that does `action` to it: continue it here (the default), read, fork,
    archive or unarchive it."""
    verb = {Cb.THREAD: "continue it here", Cb.THREAD_READ: "read it", Cb.THREAD_FORK: "fork it",
            Cb.THREAD_ARCHIVE: "archive it", Cb.THREAD_UNARCHIVE: "unarchive it"}[action]
    head = f"{'Archived threads' if archived else 'Threads'} on {node_id}; tap one to {verb}."
    lines = [head, f"This chat uses: {current or 'a new thread (starts with your next message)'}"]
    rows = [[("🆕 New thread…", callback(Cb.THREAD_START, "go"))]] if action == Cb.THREAD else []
    for t in data[:MAX_LISTED]:
        tid, preview = str(t.get("id")), " ".join(str(t.get("name") or t.get("preview") or "").split())[:40]
        where = f" (in {t['cwd']})" if t.get("cwd") else ""
        lines.append(f"• {tid}{' ← selected' if tid == current else ''}: {preview or '(no preview)'}{where}")
        if fits(action, tid):
            rows.append([(("✅ " if tid == current else "") + (preview or tid)[:40], callback(action, tid))])
    if not data:
        lines.append("None archived." if archived else "No threads yet: your next message starts one.")
    return "\n".join(lines), keyboard(rows)


def current(node_id: str, chat: dict[str, Any], node_cwd: str | None,
            thread: dict[str, Any] | None) -> tuple[str, InlineKeyboardMarkup | None]:
    binding = (chat.get("bindings") or {}).get(node_id) or {}
    effort = _or_default(chat.get("effort"), "the model's default")
    model = f"model: {_or_default(chat.get('model'))}, effort: {effort}"
    if not binding:
        where = f" in {node_cwd}" if node_cwd else ""
        return (f"This chat has no thread on {node_id} yet: your next message starts one{where}, or /thread start "
                f"picks the directory, sandbox and approvals.\n{model}"), None
    tid = binding["thread_id"]
    lines = [f"This chat's thread on {node_id}: {tid}"]
    if thread and (thread.get("name") or thread.get("preview")):
        lines.append(f"about: {_clip(str(thread.get('name') or thread.get('preview')), 80)}")
    lines += [f"directory: {binding.get('cwd') or (thread or {}).get('cwd') or _or_default(node_cwd)}",
              f"sandbox: {_or_default(binding.get('sandbox'))}",
              f"approvals: {_or_default(binding.get('approval_policy'))}", model]
    actions = (("📖 Read", Cb.THREAD_READ), ("🍴 Fork", Cb.THREAD_FORK), ("🗄 Archive", Cb.THREAD_ARCHIVE))
    rows = [[(label, callback(prefix, tid)) for label, prefix in actions if fits(prefix, tid)]]
    return "\n".join(lines), keyboard(rows)


def _item(item: dict[str, Any]) -> str | None:
    kind = item.get("type")
    if kind == "userMessage":
        text = " ".join(str(c.get("text") or "") for c in item.get("content") or [] if isinstance(c, dict))
    elif kind == "agentMessage":
        text = str(item.get("text") or "")
    elif kind == "commandExecution":
        return f"⚙️ $ {_clip(str(item.get('command') or ''), 200)}"
    elif kind == "fileChange":
        paths = [str(c.get("path")) for c in item.get("changes") or [] if isinstance(c, dict)]
        return f"📝 {', '.join(paths) or 'files changed'}"
    else:
        return None
    return f"{ITEM_MARKS[kind]} {_clip(text, ITEM_CHARS)}" if text.strip() else None


def read(thread: dict[str, Any], turns: list[dict[str, Any]], node_id: str) -> str:
    """A thread's last turns, oldest first, as the conversation read: who said what, and what ran."""
    tid = thread.get("id")
    head = f"Thread {tid} on {node_id}" + (f" (in {thread['cwd']})" if thread.get("cwd") else "")
    if not turns:
        return f"{head}: no turns yet."
    blocks = []
    for turn in reversed(turns):  # codex lists the newest first
        lines = [line for item in turn.get("items") or [] if (line := _item(item))]
        if turn.get("status") not in (None, "completed"):
            lines.append(f"({turn.get('status')})")
        blocks.append("\n".join(lines))
    # The newest turns matter most: drop the oldest until the whole fits one message.
    while len(blocks) > 1 and sum(len(b) + 2 for b in blocks) > READ_CHARS:
        blocks.pop(0)
    shown = len(blocks)
    return _clip(f"{head}, its last {shown} turn{'s' if shown != 1 else ''}:\n\n" + "\n\n".join(blocks), 4000)


def resumed(thread_id: str, node_id: str, cwd: str | None) -> str:
    where = f" in {cwd}" if cwd else ""
    return f"This chat now continues thread {thread_id} on {node_id}{where}."


def archived(thread_id: str, node_id: str, unbound: bool) -> str:
    note = " This chat's next message starts a new thread." if unbound else ""
    return f"Thread {thread_id} archived on {node_id}.{note}"


def unarchived(thread_id: str, node_id: str) -> tuple[str, InlineKeyboardMarkup | None]:
    text = f"Thread {thread_id} unarchived on {node_id}. /thread resume {thread_id} continues it here."
    rows = [[("▶ Continue it here", callback(Cb.THREAD, thread_id))]] if fits(Cb.THREAD, thread_id) else []
    return text, keyboard(rows)


def fresh_thread(node_id: str) -> str:
    return f"Your next message starts a new thread on {node_id}, with the node's defaults."


NO_THREAD = "This chat has no thread on its node yet: /thread list shows the node's threads, /thread start makes one."


# ---- the wizard -----------------------------------------------------------------------------------

def _chosen(d: Draft) -> str:
    parts = [f"node: {d.node_id}"] if d.node_id else []
    parts += [f"sandbox: {d.settings['sandbox']}"] if "sandbox" in d.settings else []
    parts += [f"approvals: {d.settings['approval_policy']}"] if "approval_policy" in d.settings else []
    return " · ".join(parts)


def wizard_step(d: Draft) -> tuple[str, InlineKeyboardMarkup | None]:
    """The wizard's current step: what was chosen so far, the question, and a button per option."""
    if d.fork_of:
        lines = [f"Fork thread {d.fork_of} on {d.node_id}: {WIZARD_STEPS['dir']}."]
    else:
        number = list(WIZARD_STEPS).index(d.step) + 1
        lines = [f"New thread, step {number} of {len(WIZARD_STEPS)}: {WIZARD_STEPS[d.step]}" +
                 ("." if d.step == "dir" else "")]
        if chosen := _chosen(d):
            lines.insert(0, chosen)
    labels = {"sandbox": SANDBOX_LABELS, "approval": APPROVAL_LABELS}.get(d.step, {})
    if d.step == "dir":
        lines.append(f"A relative path starts at {d.node_cwd}. Allowed roots on {d.node_id}: {', '.join(d.roots)}")
    rows = [[(labels.get(o) or _short_path(o), callback(Cb.WIZARD, d.wid, d.step, str(i)))]
            for i, o in enumerate(d.options)]
    rows.append([("✖ Cancel", callback(Cb.WIZARD, d.wid, "cancel", "0"))])
    return "\n".join(lines), keyboard(rows)


def dir_refused(failure: str) -> str:
    return f"{failure}\nSend another path, or tap a directory in the wizard above."


def created(d: Draft, thread_id: str, cwd: str) -> str:
    first = (f"🍴 Thread {d.fork_of} forked on {d.node_id} into {thread_id}" if d.fork_of
             else f"🧵 Thread {thread_id} started on {d.node_id}")
    return "\n".join([first, f"directory: {cwd}", f"sandbox: {_or_default(d.settings.get('sandbox'))}",
                      f"approvals: {_or_default(d.settings.get('approval_policy'))}",
                      "This chat continues it: send a message to begin."])


NOTHING_TO_FORK = ("Thread {thread_id} has no turns yet, so there is nothing to fork: send it a message first, or "
                   "/thread start a new one.")
WIZARD_ABANDONED = "Closed: your message went to Codex instead of naming a directory. /thread start to begin again."
WIZARD_CANCELLED = "Cancelled: no thread was made."
WIZARD_CLOSED = "This wizard is closed (finished, replaced or expired). Send /thread start again."
WIZARD_NOT_YOURS = "Another user began this wizard. Send /thread start to begin your own."
NO_ROOTS = ("Node {node_id} does not say which directories its threads may use (it is older than allowed_roots), "
            "so it cannot check one: upgrade it, then try again.")
NO_NODES_ONLINE = "No node is online right now: start one, or wait for it to reconnect, then /thread start again."
ADMIN_SANDBOX = "Only admins may give a thread the {sandbox} sandbox. Pick another, or ask an admin."


# ---- /model ---------------------------------------------------------------------------------------

def _effort_of(chat: dict[str, Any]) -> str:
    return chat.get("effort") or "the model's default"


def models(data: list[dict[str, Any]], chat: dict[str, Any]) -> tuple[str, InlineKeyboardMarkup | None]:
    current = chat.get("model")
    lines, rows = [f"Model for this chat: {current or 'node default'}, effort: {_effort_of(chat)}. Tap one to "
                   "switch:"], []
    for m in data[:MAX_LISTED]:
        mid = str(m.get("id") or m.get("model"))
        efforts = "/".join(str(e.get("reasoningEffort")) for e in m.get("supportedReasoningEfforts") or [])
        default = " (node default)" if m.get("isDefault") else ""
        lines.append(f"• {mid}{' ← selected' if mid == current else ''}: {m.get('description') or ''}{default}"
                     .rstrip(": ") + (f" [efforts: {efforts}]" if efforts else ""))
        if fits(Cb.MODEL, mid):
            rows.append([(("✅ " if mid == current else "") + str(m.get("displayName") or mid), callback(Cb.MODEL, mid))])
    return "\n".join(lines), keyboard(rows)


def model_selected(model: str, effort: str | None, efforts: list[str]) -> tuple[str, InlineKeyboardMarkup | None]:
    """The outcome of picking a model (and maybe an effort), with the model's efforts as buttons."""
    text = f"Model {model} selected for this chat, effort {effort or 'default'}; your next messages use them."
    rows = [[(("✅ " if e == effort else "") + e, callback(Cb.EFFORT, model, e))
             for e in efforts if fits(Cb.EFFORT, model, e)]]
    return text, keyboard(rows)


def model_reset(model: str | None, effort: str | None) -> str:
    name = model or "codex's default"
    return f"Model and effort reset to the node's defaults for this chat: {name}, effort {effort or 'default'}."


def unknown_model(model: str, node_id: str, known: list[str]) -> str:
    return f"Unknown model {model} on {node_id}. Its models: {', '.join(known)}. /model lists them with buttons."


def unknown_effort(effort: str, model: str, efforts: list[str]) -> str:
    return f"Model {model} has no reasoning effort {effort}. It offers: {', '.join(efforts) or 'none'}."
