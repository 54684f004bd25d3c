"""P1-03..P1-06: a chat's threads, where they work and with which model, through the whole chain: Telegram -> bot ->
manager -> node -> codex -> the mock model. The mock's `[[mock:whoami]]` answers with what codex told the model:
the turn's model and effort, its cwd, sandbox and approval policy."""
from __future__ import annotations

import itertools
import os
from typing import Any

import pytest

from harness.ends.telegram import FakeTelegram, TelegramUser, without_usage
from harness.stack.stack import Stack
from runtime.protocol import Api, new_id

NODE = "p1t"
NODE_ROOTS = ("projects",)  # the node's allowed_roots: its cwd and this folder beside it
_chats = itertools.count(720_001)


async def chat_on_node(tg: FakeTelegram, user_id: int = Stack.ADMIN) -> TelegramUser:
    user = tg.user(user_id, next(_chats))
    assert (await user.reply(await user.say(f"/node {NODE}")))["text"] == f"Node {NODE} selected for this chat."
    # These cases read a turn's answer in its placeholder (/result send, the default, posts it below: P1-12).
    assert (await user.reply(await user.say("/result replace")))["text"].startswith("Result mode set to replace")
    return user


def labels(message: dict[str, Any]) -> list[str]:
    return [b["text"] for row in (message.get("reply_markup") or {}).get("inline_keyboard", []) for b in row]


async def tap(user: TelegramUser, message: dict[str, Any], item: str) -> tuple[str, dict[str, Any]]:
    """Tap the one button for `item`: labelled so or standing for it (a thread id), else the one whose label ends
    with it (a directory), else the one whose label holds it. Returns the toast, and the message as it reads after."""
    found = [b for row in message["reply_markup"]["inline_keyboard"] for b in row]
    exact = [b for b in found if b["text"] == item or b["callback_data"].endswith(f":{item}")]
    [chosen] = exact or [b for b in found if b["text"].endswith(item)] or [b for b in found if item in b["text"]]
    alert = await user.alert(await user.tap(message["message_id"], chosen["callback_data"]))
    return str(alert["text"]), await user.shown(message["message_id"])


async def ask(user: TelegramUser, text: str) -> dict[str, Any]:
    return await user.sent(await user.say(text))


async def turn(user: TelegramUser, text: str, expect: str) -> str:
    """Plain text as a Codex turn; the final answer (placeholder edits skipped), which must hold `expect`."""
    placeholder = await ask(user, text)
    assert placeholder["text"].startswith("⏳"), placeholder
    final = await user.until_shown(lambda m: m["message_id"] == placeholder["message_id"] and "⏳" not in m["text"])
    assert expect in final["text"], final
    return without_usage(final["text"])


async def whoami(user: TelegramUser) -> dict[str, str]:
    """What codex told the model for this chat's next turn: model, effort, cwd, sandbox, approval."""
    text = await turn(user, f"[[mock:whoami]] {new_id('who')}", "model: ")
    return dict(part.split(": ", 1) for part in text.split(", "))


async def chat_state(stack: Stack, user: TelegramUser) -> dict[str, Any]:
    return await stack.call(Api.CHAT, {"chat_key": f"tg:{user.chat_id}"})


async def rpc(stack: Stack, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One app-server call on the node over the control API: the business result, ok or not."""
    return await stack.result(Api.APPSERVER, {"node_id": NODE, "method": method, "params": params, "timeout": 20})


async def thread_ids(stack: Stack, **params: Any) -> list[str]:
    listed = await rpc(stack, "thread/list", params)
    return [t["id"] for t in listed["result"]["data"]]


async def loaded_ids(stack: Stack) -> list[str]:
    """The threads codex holds in memory, listed or not: one started but without a turn yet is only here."""
    return list((await rpc(stack, "thread/loaded/list", {}))["result"]["data"])


async def wizard_to_dir(user: TelegramUser, sandbox: str = "workspace-write", approval: str = "never"
                        ) -> dict[str, Any]:
    """/thread start, tapped through node, sandbox and approvals: the wizard's message at its directory step."""
    wizard = await ask(user, "/thread start")
    assert "step 1 of 4" in wizard["text"] and NODE in labels(wizard), wizard
    _, wizard = await tap(user, wizard, NODE)
    assert "step 2 of 4" in wizard["text"], wizard
    _, wizard = await tap(user, wizard, sandbox)
    assert "step 3 of 4" in wizard["text"] and f"sandbox: {sandbox}" in wizard["text"], wizard
    _, wizard = await tap(user, wizard, approval)
    assert "step 4 of 4" in wizard["text"] and f"approvals: {approval}" in wizard["text"], wizard
    return wizard


@pytest.mark.case("P1-03")
async def test_thread_start_wizard(stack: Stack, tg: FakeTelegram) -> None:
    """/thread start: node, sandbox, approvals and a typed directory by a wizard; codex's thread works there with
    those settings, is bound to the chat, and keeps them across node restarts; danger-full-access is an admin's"""
    cwd, projects = stack.node_dir(NODE) / "cwd", stack.node_dir(NODE) / "projects"
    app = projects / new_id("app")
    app.mkdir()
    # A user (not an admin) is not offered the sandbox only admins may choose.
    plain = await chat_on_node(tg, Stack.USER)
    _, sandboxes = await tap(plain, await ask(plain, "/thread start"), NODE)
    assert [lb.split(":")[0] for lb in labels(sandboxes)] == ["read-only", "workspace-write", "✖ Cancel"], sandboxes

    admin = await chat_on_node(tg)
    _, admins = await tap(admin, await ask(admin, "/thread start"), NODE)
    assert "danger-full-access" in labels(admins)[2], admins
    # A turn on the chat's first thread is still running while the wizard binds the chat to a new one.
    slow = f"{new_id('slow')} still running"
    running = await ask(admin, f"{slow} [[mock:slow=3]]")
    await stack.wait_served(slow)
    wizard = await wizard_to_dir(admin)
    assert [lb.rsplit("/", 1)[-1] for lb in labels(wizard)] == ["cwd", "projects", "✖ Cancel"], wizard
    assert f"Allowed roots on {NODE}: {cwd}, {projects}" in wizard["text"], wizard
    created = await ask(admin, str(app))  # a typed path
    assert created["text"].startswith("🧵 Thread ") and f"directory: {app}" in created["text"], created
    thread_id = created["text"].split()[2]
    assert (await admin.shown(wizard["message_id"]))["text"] == created["text"]  # the wizard shows its outcome
    await admin.until_shown(lambda m: m["message_id"] == running["message_id"] and "⏳" not in m["text"])
    # The turn that finished afterwards did not take the chat back to the thread it ran on.
    binding = (await chat_state(stack, admin))["bindings"][NODE]
    assert binding == {"thread_id": thread_id, "cwd": str(app), "sandbox": "workspace-write",
                       "approval_policy": "never"}, binding
    read = await rpc(stack, "thread/read", {"threadId": thread_id})
    assert read["ok"] and read["result"]["thread"]["cwd"] == str(app), read
    assert (await ask(admin, "/thread read"))["text"] == f"Thread {thread_id} on {NODE} (in {app}): no turns yet."
    refused, _ = await tap(admin, await ask(admin, "/thread fork"), "/projects")
    assert refused.startswith(f"Thread {thread_id} has no turns yet, so there is nothing to fork"), refused

    # Restarted before its first turn: codex kept nothing of the thread, so the node starts it again, the same way.
    await stack.restart_node(NODE)
    place = {"cwd": str(app), "sandbox": "workspace-write", "approval": "never"}
    abandoned = await wizard_to_dir(admin)  # a message that is no path closes an open wizard and goes to Codex
    assert {k: v for k, v in (await whoami(admin)).items() if k in place} == place
    assert (await admin.shown(abandoned["message_id"]))["text"].startswith("Closed: your message went to Codex")
    replaced = (await chat_state(stack, admin))["bindings"][NODE]
    assert replaced["thread_id"] != thread_id and replaced["cwd"] == str(app), replaced
    assert any(thread_id in line for line in stack.procs[NODE].log_lines("thread_replaced"))
    # Restarted after a turn: resumed, with its sandbox (which codex does not keep) passed again.
    await stack.restart_node(NODE)
    assert {k: v for k, v in (await whoami(admin)).items() if k in place} == place
    assert (await chat_state(stack, admin))["bindings"][NODE]["thread_id"] == replaced["thread_id"]


@pytest.mark.case("P1-04")
async def test_thread_start_refuses_directories(stack: Stack, tg: FakeTelegram) -> None:
    """/thread start with a directory outside allowed_roots, a `..` escape, a symlink out, a file, or one that does not
    exist: refused naming the allowed roots, no thread is created; the node refuses it over the control API too"""
    cwd, projects = stack.node_dir(NODE) / "cwd", stack.node_dir(NODE) / "projects"
    outside = stack.node_dir(NODE) / new_id("outside")
    outside.mkdir()
    link = projects / new_id("link")
    os.symlink(outside, link)
    note = projects / new_id("notes.txt")
    note.write_text("not a directory\n")
    before, held = await thread_ids(stack), await loaded_ids(stack)
    admin = await chat_on_node(tg)
    wizard = await wizard_to_dir(admin)
    bad = {str(outside): "is outside the allowed roots", f"{projects}/../{outside.name}": "is outside the allowed roots",
           f"../{outside.name}": "is outside the allowed roots",  # relative to the node's cwd
           str(link): f"is outside the allowed roots (it resolves to {outside})", str(note): "is a file, not a directory",
           str(projects / "nope"): "does not exist", "/etc": "is outside the allowed roots"}
    for path, reason in bad.items():
        refused = (await ask(admin, path))["text"]
        assert refused.startswith("Starting the thread failed: kind=path_not_allowed, retriable=no"), refused
        assert f"{path} {reason}" in refused and f"Allowed roots on this node: {cwd}, {projects}" in refused, refused
    assert (await thread_ids(stack), await loaded_ids(stack)) == (before, held)
    assert NODE not in (await chat_state(stack, admin))["bindings"]
    # Not only the bot: the node itself refuses every method that places work in a directory.
    for method, params in (("thread/start", {"cwd": str(link)}), ("command/exec", {"command": ["true"], "cwd": "/"}),
                           ("thread/fork", {"threadId": new_id("t"), "cwd": f"{cwd}/../{outside.name}"})):
        answer = await rpc(stack, method, params)
        assert not answer["ok"] and answer["error_kind"] == "path_not_allowed", (method, answer)
    assert (await thread_ids(stack), await loaded_ids(stack)) == (before, held)
    # The wizard stayed open through the refusals: a root's button still makes the thread.
    toast, done = await tap(admin, wizard, "/projects")
    assert toast.startswith("🧵 Thread ") and f"directory: {projects}" in done["text"], (toast, done)
    assert len(await loaded_ids(stack)) == len(held) + 1


@pytest.mark.case("P1-05")
async def test_thread_subcommands(stack: Stack, tg: FakeTelegram) -> None:
    """/thread current, read, fork, list, resume, archive, unarchive: each does what codex's method of that name does,
    with buttons where a choice is needed; fork asks for a directory; read shows the last turns readably"""
    projects = stack.node_dir(NODE) / "projects"
    user = await chat_on_node(tg)
    first, second = new_id("first"), new_id("second")
    await turn(user, first, f"mock reply: {first}")
    await turn(user, second, f"mock reply: {second}")
    t1 = (await chat_state(stack, user))["threads"][NODE]

    now = (await ask(user, "/thread current"))["text"]
    assert f"This chat's thread on {NODE}: {t1}" in now and f"directory: {stack.node_dir(NODE) / 'cwd'}" in now, now
    read = (await ask(user, "/thread read"))["text"]
    assert read.index(f"👤 {first}") < read.index(f"🤖 mock reply: {first}") < read.index(f"👤 {second}"), read

    # fork: a directory step (the roots as buttons), then codex's thread/fork there, bound to the chat.
    wizard = await ask(user, "/thread fork")
    assert f"Fork thread {t1}" in wizard["text"] and labels(wizard)[1].endswith("/projects"), wizard
    toast, forked = await tap(user, wizard, "/projects")
    t2 = (await chat_state(stack, user))["threads"][NODE]
    assert toast == f"🍴 Thread {t1} forked on {NODE} into {t2}" and f"directory: {projects}" in forked["text"]
    fork_read = await rpc(stack, "thread/read", {"threadId": t2})
    assert fork_read["result"]["thread"]["forkedFromId"] == t1 and fork_read["result"]["thread"]["cwd"] == str(projects)
    await turn(user, "[[mock:history]] on the fork", "history: 3 user messages")  # the fork has t1's history

    # list, and continue one by its button (thread/resume); resume by id.
    listing = await ask(user, "/thread list")
    assert f"• {t2} ← selected" in listing["text"] and f"• {t1}:" in listing["text"], listing
    toast, _ = await tap(user, listing, t1)
    assert toast.startswith(f"This chat now continues thread {t1} on {NODE}"), toast
    assert (await chat_state(stack, user))["threads"][NODE] == t1
    assert (await ask(user, f"/thread resume {t2}"))["text"].startswith(f"This chat now continues thread {t2}")

    # archive: another thread by its button, then the chat's own, which unbinds the chat.
    toast, _ = await tap(user, await ask(user, "/thread archive"), t1)
    assert toast == f"Thread {t1} archived on {NODE}.", toast
    assert t1 not in await thread_ids(stack) and t1 in await thread_ids(stack, archived=True)
    assert (await ask(user, f"/thread archive {t2}"))["text"].endswith("This chat's next message starts a new thread.")
    assert NODE not in (await chat_state(stack, user))["threads"]

    # unarchive by its button among the archived ones; the thread is back and continues where it was.
    unarchiving = await ask(user, "/thread unarchive")
    assert unarchiving["text"].startswith(f"Archived threads on {NODE}") and f"• {t1}:" in unarchiving["text"]
    toast, _ = await tap(user, unarchiving, t1)
    assert toast.startswith(f"Thread {t1} unarchived on {NODE}."), toast
    assert t1 in await thread_ids(stack)
    await ask(user, f"/thread resume {t1}")
    await turn(user, "[[mock:history]] back again", "history: 3 user messages")


@pytest.mark.case("P1-06")
async def test_model_and_effort(stack: Stack, tg: FakeTelegram) -> None:
    """/model [name] [effort]: per chat, only what the node's model/list offers; the next turn uses them, and they
    survive a manager restart"""
    listed = (await rpc(stack, "model/list", {}))["result"]["data"]
    efforts = {m["id"]: [e["reasoningEffort"] for e in m["supportedReasoningEfforts"]] for m in listed}
    user, other = await chat_on_node(tg), await chat_on_node(tg)
    default = await whoami(user)

    listing = await ask(user, "/model")
    assert [ln[2:].split(":")[0] for ln in listing["text"].splitlines() if ln.startswith("• ")] == list(efforts)
    # Another model, and an effort that is not its default. Codex sends an effort to the model as it is, up to
    # xhigh: it maps its own higher ones (max, ultra) down, so they cannot be told apart at the mock.
    model, effort = next((m["id"], "high") for m in listed if m["id"] != default["model"]
                         and "high" in efforts[m["id"]] and m["defaultReasoningEffort"] != "high")
    toast, picked = await tap(user, listing, next(m["displayName"] for m in listed if m["id"] == model))
    own = next(m["defaultReasoningEffort"] for m in listed if m["id"] == model)  # a model alone: its default effort
    assert toast.startswith(f"Model {model} selected for this chat, effort {own};"), toast
    assert labels(picked) == [("✅ " if e == own else "") + e for e in efforts[model]] and picked["text"] == toast
    toast, _ = await tap(user, picked, effort)
    assert toast.startswith(f"Model {model} selected for this chat, effort {effort};"), toast
    assert {k: v for k, v in (await whoami(user)).items() if k in ("model", "effort")} == {"model": model,
                                                                                         "effort": effort}
    # Typed: a name and an effort the node offers; anything else is refused and changes nothing.
    typed = (await ask(user, f"/model {default['model']} {efforts[default['model']][0]}"))["text"]
    assert typed.startswith(f"Model {default['model']} selected for this chat, effort {efforts[default['model']][0]}")
    assert (await ask(user, "/model nosuch"))["text"].startswith(f"Unknown model nosuch on {NODE}. Its models: ")
    assert (await ask(user, f"/model {default['model']} nosuch"))["text"] == (
        f"Model {default['model']} has no reasoning effort nosuch. It offers: {', '.join(efforts[default['model']])}.")
    state = await chat_state(stack, user)
    assert (state["model"], state["effort"]) == (default["model"], efforts[default["model"]][0]), state
    # Per chat: another chat still runs the node's defaults. And the choice is the manager's, kept across its restart.
    assert {k: (await whoami(other))[k] for k in ("model", "effort")} == {k: default[k] for k in ("model", "effort")}
    await stack.restart_manager()
    await stack.wait_online(NODE, timeout=20)
    assert (await whoami(user))["effort"] == efforts[default["model"]][0]
    # Back to the node's defaults: codex would keep a thread's last model and effort, so they are named explicitly.
    assert (await ask(user, f"/model {model} {effort}"))["text"].startswith(f"Model {model} selected")
    assert (await ask(user, "/model default"))["text"] == ("Model and effort reset to the node's defaults for this "
                                                          f"chat: {default['model']}, effort {default['effort']}.")
    assert {k: (await whoami(user))[k] for k in ("model", "effort")} == {k: default[k] for k in ("model", "effort")}
