"""C: the full chain, Telegram -> bot -> manager -> node -> codex -> mock model -> back, all real processes."""
from __future__ import annotations

import itertools
import py_compile
import subprocess
import sys
from typing import Any

import pytest

from harness.ends.telegram import FakeTelegram, TelegramUser, button
from harness.ends.upstream import PATCH_FILE
from harness.stack import paths
from harness.stack.stack import Stack
from runtime.protocol import Api, new_id

NODE = "c1"
_chats = itertools.count(700_001)


async def fresh_chat(tg: FakeTelegram, node_id: str = NODE) -> TelegramUser:
    """A new chat of the admin's, with `node_id` picked through /node and its button, as a user would."""
    user = tg.user(Stack.ADMIN, next(_chats))
    await user.pick_node(node_id)
    return user


turn = TelegramUser.turn


async def chat_thread(stack: Stack, user: TelegramUser, node_id: str = NODE) -> str | None:
    return (await stack.call(Api.CHAT, {"chat_key": f"tg:{user.chat_id}"}))["threads"].get(node_id)


@pytest.mark.case("C-01")
def test_static_check() -> None:
    """every module compiles and lints clean"""
    tops = ("runtime", "harness", "scenarios", "tests", "bench")
    files = [p for top in tops for p in (paths.REPO_ROOT / top).rglob("*.py")]
    assert len(files) > 40, files
    for f in files:
        py_compile.compile(str(f), doraise=True)
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=paths.REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert lint.returncode == 0, lint.stdout[-3000:]


@pytest.mark.case("C-02")
async def test_control_dispatch_text(stack: Stack, tg: FakeTelegram) -> None:
    """control -> manager -> node -> codex -> manager: dispatch_text returns ok"""
    prompt = f"over the control plane {new_id('p')}"
    result = await stack.result(Api.DISPATCH_TEXT, {"chat_key": new_id("ctl"), "node_id": NODE, "text": prompt})
    assert result["ok"] and result["text"] == f"mock reply: {prompt}" and result["thread_id"], result


@pytest.mark.case("C-03")
async def test_first_text_creates_thread(stack: Stack, tg: FakeTelegram) -> None:
    """the chat's first text creates a Codex thread and the user sees Codex's answer"""
    user = await fresh_chat(tg)
    assert await chat_thread(stack, user) is None
    await turn(user, "hello from telegram", "mock reply: hello from telegram")
    thread_id = await chat_thread(stack, user)
    assert thread_id
    listed = await stack.result(Api.APPSERVER, {"node_id": NODE, "method": "thread/list", "params": {}})
    assert thread_id in [t["id"] for t in listed["result"]["data"]]


@pytest.mark.case("C-04")
async def test_next_message_reuses_thread(stack: Stack, tg: FakeTelegram) -> None:
    """the next message reuses that thread, and Codex sees the history"""
    user = await fresh_chat(tg)
    await turn(user, "first words", "mock reply: first words")
    first = await chat_thread(stack, user)
    await turn(user, "[[mock:history]] count them", "history: 2 user messages")
    assert await chat_thread(stack, user) == first


async def approval_prompt(user: TelegramUser, since: int) -> dict[str, Any]:
    prompt = await user.until_shown(lambda m: "Approval needed" in m["text"] and m.get("reply_markup"))
    assert "command:" in prompt["text"] and "relay-approved" in prompt["text"] and "cwd:" in prompt["text"]
    return prompt


@pytest.mark.case("C-05")
async def test_approve_button_runs_command(stack: Stack, tg: FakeTelegram) -> None:
    """approval requested -> Approve button -> the command runs -> result"""
    user = await fresh_chat(tg)
    since = await user.say("please run it [[mock:approve]]")
    prompt = await approval_prompt(user, since)
    alert = await user.alert(await user.tap(prompt["message_id"], button(prompt, "Approve")))
    assert "approved" in alert["text"].lower(), alert
    answer = await user.until_shown(lambda m: "tool said:" in m["text"] and "⏳" not in m["text"])
    assert "relay-approved" in answer["text"] and "exited with code 0" in answer["text"]
    decided = await user.shown(prompt["message_id"])
    assert "Approved by" in decided["text"] and not decided.get("reply_markup")


@pytest.mark.case("C-06")
async def test_decline_button_tells_model(stack: Stack, tg: FakeTelegram) -> None:
    """approval requested -> Decline -> the model is told; the reply reflects it. The request is a file change:
    codex 0.171 offers `decline` for those (no availableDecisions, so every decision its response takes), while for
    a command it offers only accept, an execpolicy amendment and cancel (P1-08)."""
    user = await fresh_chat(tg)
    await user.say("please write it [[mock:patch]]")
    prompt = await user.until_shown(lambda m: "Approval needed" in m["text"] and m.get("reply_markup"))
    assert f"• {PATCH_FILE} (add)" in prompt["text"], prompt
    await user.alert(await user.tap(prompt["message_id"], button(prompt, "Decline")))
    answer = await user.until_shown(lambda m: "tool said:" in m["text"] and "⏳" not in m["text"])
    assert "rejected" in answer["text"], answer
    assert not (stack.root / "nodes" / NODE / "cwd" / PATCH_FILE).exists(), "a declined patch was applied"
    assert "Declined by" in (await user.shown(prompt["message_id"]))["text"]


@pytest.mark.case("C-07")
async def test_token_lifecycle_over_telegram(stack: Stack, tg: FakeTelegram) -> None:
    """/token generate -> a node connects with it -> /token revoke -> the node is cut off and refused"""
    admin, node_id = tg.user(Stack.ADMIN, next(_chats)), new_id("c7")
    created = await admin.reply(await admin.say(f"/token generate node={node_id} note=c7"))
    fields = dict(line.split(": ", 1) for line in created["text"].splitlines() if ": " in line)
    assert created["text"].startswith("token created") and fields["token_id"].startswith("tok_")
    await stack.add_node(node_id, token=fields["token"])
    assert node_id in (await stack.call(Api.SERVERS))["online"]
    revoked = await admin.reply(await admin.say(f"/token revoke {fields['token_id']}"))
    assert fields["token_id"] in revoked["text"] and node_id in revoked["text"], revoked
    await stack.wait_online(node_id, online=False, timeout=10)
    refused = await stack.procs[node_id].wait_log("register_rejected")  # it retried, and was refused
    assert "error_kind=unauthorized" in refused
    assert node_id not in (await stack.call(Api.SERVERS))["online"]
    stack.procs[node_id].terminate()


@pytest.mark.case("C-08")
async def test_manager_restart_mid_conversation(stack: Stack, tg: FakeTelegram) -> None:
    """the manager restarts mid-conversation; the next message works on the same thread"""
    user = await fresh_chat(tg)
    await turn(user, "before the restart", "mock reply: before the restart")
    thread_id = await chat_thread(stack, user)
    await stack.restart_manager()
    await stack.wait_online(NODE, timeout=20)
    await turn(user, "[[mock:history]] after the restart", "history: 2 user messages")
    assert await chat_thread(stack, user) == thread_id
    assert stack.procs["bot"].alive and stack.procs["bot"].starts == 1


@pytest.mark.case("C-09")
async def test_node_restart_mid_conversation(stack: Stack, tg: FakeTelegram) -> None:
    """the node restarts mid-conversation; the next message works on the same thread"""
    user = await fresh_chat(tg)
    await turn(user, "before the node restart", "mock reply: before the node restart")
    thread_id = await chat_thread(stack, user)
    await stack.restart_node(NODE)
    await turn(user, "[[mock:history]] after the node restart", "history: 2 user messages")
    assert await chat_thread(stack, user) == thread_id


@pytest.mark.case("C-10")
async def test_upstream_disconnect_then_recovery(stack: Stack, tg: FakeTelegram) -> None:
    """the upstream drops: the user sees kind=upstream_disconnect, retriable=yes; the next message works"""
    user = await fresh_chat(tg)
    failed = await turn(user, "this one drops [[mock:drop]]", "kind=upstream_disconnect")
    assert "retriable=yes" in failed["text"]
    await turn(user, "and this one works", "mock reply: and this one works")


@pytest.mark.case("R-04")
async def test_bot_killed_while_turns_finish(stack: Stack, tg: FakeTelegram) -> None:
    """the bot is SIGKILLed while a turn finishes; after its restart the answer arrives once, and never again"""
    user = await fresh_chat(tg)
    run = new_id("r04")
    prompt = f"{run} finishes while the bot is down"
    answer = f"mock reply: {prompt}"
    placeholder = await user.sent(await user.say(f"{prompt} [[mock:slow=2]]"))
    assert placeholder["text"].startswith("⏳"), placeholder
    await stack.wait_served(prompt)
    bot, manager = stack.procs["bot"], stack.procs["manager"]
    finals = len(manager.log_lines("task_final"))
    bot.kill()
    await manager.wait_log("task_final", seen=finals, timeout=30)  # the answer exists, with no bot to show it

    async def restart_bot() -> None:
        bot.kill()
        polls = await tg.last_seq()
        bot.start()
        await tg.wait_call("getUpdates", None, polls, 30)
        await turn(user, f"{run} ping", f"mock reply: {run} ping")  # the bot is back and caught up

    def is_answer(m: dict[str, Any]) -> bool:  # the answer, with the turn's token usage under it (P1-13)
        return bool(m["text"].partition("\n\n🔢")[0] == answer)

    await restart_bot()
    await user.until_shown(is_answer, 30)
    await restart_bot()  # its place in the events was kept: nothing shown before comes again
    shown = [m for m in await user.messages() if m.get("from_bot") and is_answer(m)]
    assert len(shown) == 1, f"the answer was shown {len(shown)} times: {shown}"


@pytest.mark.case("S-02")
async def test_approval_belongs_to_its_chat(stack: Stack, tg: FakeTelegram) -> None:
    """another chat's user cannot decide an approval, by /approve or by a forged button; an admin can"""
    owner = await fresh_chat(tg)
    since = await owner.say("please run it [[mock:approve]]")
    prompt = await approval_prompt(owner, since)
    approval_id = next(line[4:] for line in prompt["text"].splitlines() if line.startswith("id: "))
    intruder = tg.user(Stack.USER, next(_chats))  # an allowed user, in a chat of their own
    refused = await intruder.sent(await intruder.say(f"/approve {approval_id}"))
    assert "kind=forbidden" in refused["text"] and "another chat" in refused["text"], refused
    # A forged button: chat A's Approve callback data, pressed on a bot message in the intruder's own chat.
    forged = await intruder.alert(await intruder.tap(refused["message_id"], button(prompt, "Approve")))
    assert "another chat" in forged["text"], forged
    pending = [a for a in (await stack.call(Api.APPROVALS, {"state": "pending"}))["approvals"]
               if a["approval_id"] == approval_id]
    assert pending, "a refused decision changed the approval"
    # An admin may decide from anywhere; the decision records who, by Telegram user id.
    admin = tg.user(Stack.ADMIN, next(_chats))
    done = await admin.reply(await admin.say(f"/approve {approval_id}"))
    assert done["text"].startswith("Approved"), done
    decided = next(a for a in (await stack.call(Api.APPROVALS))["approvals"] if a["approval_id"] == approval_id)
    assert decided["state"] == "approved" and f"tg:{Stack.ADMIN}" in decided["decided_by"], decided
    await owner.until_shown(lambda m: "tool said:" in m["text"] and "⏳" not in m["text"])
