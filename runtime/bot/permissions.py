"""S-01: who may use each command and button, in one table. The handlers take every check from it, and the
README's permission table is this table printed (`python -m runtime.bot.permissions`; tests/test_permissions.py
fails when they differ)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from runtime.bot.render import Cb


class Role(IntEnum):
    """Ordered: each role may do all that the ones below it may."""

    STRANGER = 0   # any Telegram user not allowed by the bot's settings or the manager's users
    USER = 1       # allowed_users, or a manager user with role `user`
    ADMIN = 2      # admin_users, or a manager user with role `admin`


@dataclass(frozen=True)
class Rule:
    who: Role    # the least role that may use it
    what: str    # what it does, for the README's table


USER, ADMIN = Role.USER, Role.ADMIN

COMMANDS: dict[str, Rule] = {
    "start": Rule(USER, "what the bot does (same as /help)"),
    "help": Rule(USER, "what the bot does"),
    "node": Rule(USER, "list the nodes, pick one for this chat"),
    "status": Rule(USER, "the chat's node: state, model, thread"),
    "model": Rule(USER, "list models, pick one for this chat"),
    "thread": Rule(USER, "list threads, start a new one or switch"),
    "approve": Rule(USER, "approve a request posted in this chat (an admin: in any chat)"),
    "decline": Rule(USER, "decline a request posted in this chat (an admin: in any chat)"),
    "stop": Rule(USER, "stop the chat's running turn (an admin: any chat's, by its Stop button)"),
    "queue": Rule(USER, "on: a message sent while a turn runs waits for it; off (default): it steers that turn"),
    "review": Rule(USER, "Codex reviews the uncommitted changes of the chat's thread; the findings are posted"),
    "compact": Rule(USER, "Codex compacts the chat's thread (summarizes its history); confirmed when done"),
    "file": Rule(USER, "a file from the thread's working directory, as a document"),
    "diff": Rule(USER, "the thread's working-tree diff, as a .patch document"),
    "verbose": Rule(USER, "how much the chat's progress messages show: 0, 1 or 2"),
    "result": Rule(USER, "the chat's final answers: sent as a new message, or edited into the progress message"),
    "usage": Rule(USER, "the usage limits of Codex's login on the chat's node"),
    "token": Rule(ADMIN, "node tokens: generate, list, revoke"),
    "user": Rule(ADMIN, "who may use the bot: add, remove, list"),
    "config_value_write": Rule(ADMIN, "write a Codex config value on the node (it can name programs codex runs)"),
}

BUTTONS: dict[Cb, Rule] = {
    Cb.NODE: Rule(USER, "a node under /node"),
    Cb.MODEL: Rule(USER, "a model under /model"),
    Cb.THREAD: Rule(USER, "a thread (or New thread) under /thread"),
    Cb.APPROVE: Rule(USER, "the decisions codex offers on an approval prompt (Approve, Decline, ...), in its chat (an "
                           "admin: in any chat)"),
    Cb.STOP: Rule(USER, "Stop on a turn's progress message, in its chat (an admin: in any chat)"),
    Cb.EFFORT: Rule(USER, "a reasoning effort under /model"),
    Cb.THREAD_START: Rule(USER, "Start a thread under /thread: opens the wizard"),
    Cb.THREAD_READ: Rule(USER, "Read a thread under /thread"),
    Cb.THREAD_FORK: Rule(USER, "Fork a thread under /thread: opens the wizard for its directory"),
    Cb.THREAD_ARCHIVE: Rule(USER, "Archive a thread under /thread"),
    Cb.THREAD_UNARCHIVE: Rule(USER, "Unarchive a thread under /thread archived"),
    Cb.WIZARD: Rule(USER, "a step of the /thread start or fork wizard (node, sandbox, approvals, directory)"),
    Cb.QUESTION: Rule(USER, "an option of a question Codex asks, in the chat it asks in"),
}

# Choices inside a command: who may pick them. A sandbox without limits lets codex do anything on the node.
CHOICES: dict[str, Rule] = {
    "sandbox danger-full-access": Rule(ADMIN, "the sandbox `danger-full-access` in the /thread wizard"),
}

TEXT = Rule(USER, "any other text: a Codex turn on the chat's node, or the answer to the question Codex asks there")
MEDIA = Rule(USER, "a document or photo: saved in the thread's uploads folder on the chat's node; a photo, or a "
                   "caption, starts a Codex turn. A voice note: transcribed by the node's provider, shown, and run "
                   "as a Codex turn")
OTHER = Rule(USER, "an unknown command, or a button the bot no longer knows: told so")


def table() -> str:
    """The README's permission table."""
    rows = [(f"`/{name}`", rule) for name, rule in COMMANDS.items()]
    rows += [(f"button `{prefix.value}:`", rule) for prefix, rule in BUTTONS.items()]
    rows += [(f"choice `{name}`", rule) for name, rule in CHOICES.items()]
    rows += [("text", TEXT), ("document, photo or voice note", MEDIA), ("other", OTHER)]
    lines = ["| command or button | stranger | user | admin | what |", "|---|---|---|---|---|"]
    for label, rule in rows:
        lines.append(f"| {label} | {' | '.join('yes' if role >= rule.who else 'no' for role in Role)} | {rule.what} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
