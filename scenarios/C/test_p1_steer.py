"""P1, the chat's session: a message while a turn runs (steer or queue), /review and /compact, codex's questions.

The full chain: Telegram -> bot -> manager -> node -> codex -> mock model. What the node and codex said to each
other is read back from the node's app-server traffic log (Stack.traffic); what the model was asked, from the mock.
"""
from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.ends.telegram import FakeTelegram, TelegramUser, button, without_usage
from harness.ends.upstream import prompt_key
from harness.stack.stack import Stack
from runtime.backoff import Backoff
from runtime.protocol import Api, new_id

NODE = "p1s"
APPROVAL_TIMEOUT = 4.0  # the node's timer for a question nobody answers: P1-10 waits past it
NODE_SETTINGS = {"approval_timeout": APPROVAL_TIMEOUT}
_chats = itertools.count(730_001)


async def fresh_chat(tg: FakeTelegram) -> TelegramUser:
    """A chat on NODE with /result replace: these cases read each turn's outcome in its placeholder (/result send,
    the default, posts it below instead: P1-12)."""
    user = tg.user(Stack.ADMIN, next(_chats))
    await user.pick_node(NODE)
    assert (await user.reply(await user.say("/result replace")))["text"].startswith("Result mode set to replace")
    return user


def sent(stack: Stack, method: str) -> list[dict[str, Any]]:
    """Lines the node sent codex calling `method`."""
    return [line for line in stack.traffic(NODE) if line["dir"] == ">>" and line["msg"].get("method") == method]


def received(stack: Stack, method: str) -> list[dict[str, Any]]:
    return [line for line in stack.traffic(NODE) if line["dir"] == "<<" and line["msg"].get("method") == method]


def answers(stack: Stack, request: dict[str, Any]) -> list[dict[str, Any]]:
    """What the node answered a server request of codex's (the same child, the request's id)."""
    return [line for line in stack.traffic(NODE) if line["dir"] == ">>" and "method" not in line["msg"]
            and line["msg"].get("id") == request["msg"]["id"] and line["gen"] == request["gen"]
            and line["t"] >= request["t"]]


def with_text(lines: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """The calls among `lines` whose input carries `text` (turn/start, turn/steer)."""
    return [line for line in lines if any(text in str(i.get("text")) for i in line["msg"]["params"].get("input", []))]


def task_of(placeholder: dict[str, Any]) -> str:
    return button(placeholder, "Stop").partition(":")[2]  # the placeholder's Stop button names its task


async def final(user: TelegramUser, placeholder: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """The placeholder once its turn has finished (no longer working, no Stop button); its text is the answer's own,
    without the token usage line under it (P1-13)."""
    done = await user.until_shown(lambda m: m["message_id"] == placeholder["message_id"] and "⏳" not in m["text"]
                                  and not m.get("reply_markup"), timeout)
    return {**done, "text": without_usage(done["text"])}


async def task(stack: Stack, task_id: str) -> dict[str, Any]:
    return dict((await stack.call(Api.TASKS, {"task_id": task_id}))["task"])


@pytest.mark.case("P1-02")
async def test_message_while_a_turn_runs(stack: Stack, tg: FakeTelegram) -> None:
    """a message sent while a turn runs on the chat's thread: by default it steers that turn (turn/steer), and the
    user reads that it was added; with /queue on the next one waits and runs after it, and the user reads that it
    is queued; every prompt reaches the model once, none runs twice, all on the chat's one thread"""
    user, run = await fresh_chat(tg), new_id("p102")
    # A fresh chat: its first turn is still streaming (its thread is new) when the second message comes.
    first, second = f"{run} first [[mock:slow=3]]", f"{run} steered in"
    p1 = await user.sent(await user.say(first))
    await stack.wait_served(first)
    p2 = await user.sent(await user.say(second))
    told = await user.until_shown(lambda m: m["message_id"] == p2["message_id"] and m["text"].startswith("↪️"))
    assert "Added to the running turn" in told["text"] and not told.get("reply_markup"), told
    answer = await final(user, p1)
    # codex answered the steered text within the first turn: the model's last input was the second message.
    assert answer["text"] == f"mock reply: {prompt_key(second)}", answer
    [started] = with_text(sent(stack, "turn/start"), run)
    [steer] = with_text(sent(stack, "turn/steer"), second)
    turn_id = (await task(stack, task_of(p1)))["result"]["turn_id"]
    assert steer["msg"]["params"]["expectedTurnId"] == turn_id, steer
    assert steer["msg"]["params"]["threadId"] == started["msg"]["params"]["threadId"], (steer, started)
    steered = await task(stack, task_of(p2))
    assert steered["state"] == "done" and steered["result"]["steered_into"] == task_of(p1), steered
    assert (await stack.serves(first), await stack.serves(second)) == (1, 1)

    # /queue on: the next message waits for the running turn, then runs as a turn of its own.
    assert (await user.reply(await user.say("/queue on")))["text"].startswith("Queue mode is now on")
    assert (await stack.call(Api.CHAT, {"chat_key": f"tg:{user.chat_id}"}))["queue"] is True
    third, fourth = f"{run} third [[mock:slow=2]]", f"{run} fourth [[mock:history]]"
    p3 = await user.sent(await user.say(third))
    await stack.wait_served(third)
    p4 = await user.sent(await user.say(fourth))
    waiting = await user.until_shown(lambda m: m["message_id"] == p4["message_id"] and "Queued" in m["text"])
    assert button(waiting, "Stop"), waiting  # a queued message can still be stopped
    assert await stack.serves(fourth) == 0, "the queued message ran before the running turn ended"
    assert (await final(user, p3))["text"] == f"mock reply: {prompt_key(third)}"
    # One thread all along: the model sees every message of the chat, the steered one included.
    assert (await final(user, p4))["text"] == "history: 4 user messages"
    [done3] = [r for r in received(stack, "turn/completed")
               if r["msg"]["params"]["turn"]["id"] == (await task(stack, task_of(p3)))["result"]["turn_id"]]
    [start4] = with_text(sent(stack, "turn/start"), prompt_key(fourth))
    assert start4["t"] >= done3["t"], "the queued turn started before the running one ended"
    threads = {(await task(stack, task_of(p)))["thread_id"] for p in (p1, p2, p3, p4)}
    assert len(threads) == 1, threads
    assert [await stack.serves(p) for p in (first, second, third, fourth)] == [1, 1, 1, 1]
    assert len(with_text(sent(stack, "turn/start"), run)) == 3  # first, third, fourth: the steered one never alone
    assert (await user.reply(await user.say("/queue off")))["text"].startswith("Queue mode is now off")


async def model_asked(stack: Stack, before: int, timeout: float = 15.0) -> None:
    """Until the mock model has had a request more than `before`: codex is waiting on it."""
    async for _ in Backoff(0.05, factor=1).tries(timeout):
        if (await stack.upstream("GET", "/_mock/stats"))["requests"] > before:
            return
    raise TimeoutError(f"codex asked the model nothing within {timeout}s")


def uncommitted(cwd: Path, name: str) -> None:
    """The node's folder as a user's project: a git repository with a file not yet committed."""
    subprocess.run(["git", "init", "-q"], cwd=cwd, check=True, timeout=30)
    (cwd / name).write_text("print('not committed yet')\n")


@pytest.mark.case("P1-14")
async def test_review_and_compact(stack: Stack, tg: FakeTelegram) -> None:
    """/review: codex reviews the thread's uncommitted changes (review/start) and its findings are posted; /compact:
    codex compacts the thread (thread/compact/start), confirmed once codex reports the compaction done"""
    user, run = await fresh_chat(tg), new_id("p114")
    refused = await user.reply(await user.say("/review"))
    assert refused["text"].startswith(f"This chat has no Codex thread on {NODE} yet"), refused
    changed = f"{run.replace('_', '-')}.py"
    uncommitted(Path(stack.node_settings[NODE]["cwd"]), changed)
    await user.turn(f"{run} start the thread", "mock reply")
    thread_id = (await stack.call(Api.CHAT, {"chat_key": f"tg:{user.chat_id}"}))["threads"][NODE]

    placeholder = await user.sent(await user.say("/review"))
    assert placeholder["text"].startswith("⏳ Reviewing the uncommitted changes"), placeholder
    review = await final(user, placeholder)
    assert review["text"].startswith("🔍 Review of the uncommitted changes"), review
    assert f"Uncommitted change in {changed}" in review["text"], review
    [start] = [s for s in sent(stack, "review/start") if s["msg"]["params"]["threadId"] == thread_id]
    assert start["msg"]["params"]["target"] == {"type": "uncommittedChanges"}, start
    # Codex ran the review (the model looked at the working tree) and left review mode with the findings.
    items = [r["msg"]["params"]["item"] for r in received(stack, "item/completed")
             if r["msg"]["params"].get("threadId") == thread_id and r["t"] >= start["t"]]
    assert any(i["type"] == "commandExecution" and "git status" in i["command"] for i in items), items
    [exited] = [i for i in items if i["type"] == "exitedReviewMode"]
    assert changed in exited["review"], exited
    assert (await task(stack, task_of(placeholder)))["state"] == "done"

    # A review runs like any turn: Stop interrupts it (the turn codex runs for it), and it ends cancelled.
    await stack.upstream("POST", "/_mock/mode", {"behavior": "hang"})
    try:
        asked = (await stack.upstream("GET", "/_mock/stats"))["requests"]
        placeholder = await user.sent(await user.say("/review"))
        await model_asked(stack, asked)
        await user.tap(placeholder["message_id"], button(placeholder, "Stop"))
        await user.until_shown(lambda m: m["message_id"] == placeholder["message_id"] and "Stopped" in m["text"])
    finally:
        await stack.upstream("POST", "/_mock/mode", {"behavior": None})
    stopped = await task(stack, task_of(placeholder))
    assert stopped["state"] == "cancelled", stopped
    [running] = [r["msg"]["params"]["turn"]["id"] for r in received(stack, "turn/started")
                 if r["msg"]["params"]["turn"].get("rootTurnId") == stopped["result"]["turn_id"]]
    assert [i for i in sent(stack, "turn/interrupt") if i["msg"]["params"]["turnId"] == running], "no interrupt"

    compactions = (await stack.upstream("GET", "/_mock/stats"))["by_behavior"].get("compact", 0)
    placeholder = await user.sent(await user.say("/compact"))
    assert placeholder["text"].startswith("⏳ Compacting"), placeholder
    confirmed = await final(user, placeholder)
    assert confirmed["text"].startswith("🗜 Compacted"), confirmed
    [compact] = [s for s in sent(stack, "thread/compact/start") if s["msg"]["params"]["threadId"] == thread_id]
    compacted = [r for r in received(stack, "item/completed") if r["t"] >= compact["t"]
                 and r["msg"]["params"]["item"]["type"] == "contextCompaction"
                 and r["msg"]["params"]["threadId"] == thread_id]
    assert len(compacted) == 1, compacted
    assert (await stack.upstream("GET", "/_mock/stats"))["by_behavior"].get("compact", 0) == compactions + 1
    assert (await task(stack, task_of(placeholder)))["state"] == "done"
    # The thread goes on after its compaction.
    await user.turn(f"{run} after the compaction", f"mock reply: {run} after the compaction")


@pytest.mark.case("P1-10")
async def test_codex_asks_the_user(stack: Stack, tg: FakeTelegram) -> None:
    """codex asks the user (item/tool/requestUserInput): the options are buttons, a typed message answers where
    codex allows free text, the answer reaches codex once; a question nobody answers expires like an approval"""
    user, run = await fresh_chat(tg), new_id("p110")
    # One question, answered by its button.
    placeholder = await user.sent(await user.say(f"{run} deploy it [[mock:ask]]"))
    asked = await user.until_shown(lambda m: m["text"].startswith("❓") and m.get("reply_markup"))
    assert "Which environment should I deploy to?" in asked["text"], asked
    assert [b["text"] for row in asked["reply_markup"]["inline_keyboard"] for b in row] == ["staging", "production"]
    request = received(stack, "item/tool/requestUserInput")[-1]
    toast = await user.press(asked["message_id"], button(asked, "production"))
    assert toast["text"] == "Answered: Codex has your answer.", toast
    reply = {"answers": {"env": {"answers": ["production"]}}}
    assert json.dumps(reply, separators=(",", ":")) in (await final(user, placeholder))["text"]
    [answered] = answers(stack, request)  # once
    assert answered["msg"]["result"] == reply, answered
    closed = await user.shown(asked["message_id"])
    assert "✅ Answered by" in closed["text"] and "→ production" in closed["text"], closed
    assert not closed.get("reply_markup"), closed

    # Two questions: one by a button, the other typed (codex allows free text); the answers go to codex together.
    placeholder = await user.sent(await user.say(f"{run} release it [[mock:ask=2]]"))
    asked = await user.until_shown(lambda m: "What should the release note say?" in m["text"] and m.get("reply_markup"))
    request = received(stack, "item/tool/requestUserInput")[-1]
    toast = await user.press(asked["message_id"], button(asked, "staging"))
    assert toast["text"] == "Noted: staging. 1 more question to answer.", toast
    assert not answers(stack, request), "codex was answered before every question had an answer"
    typed = f"{run} ship it quietly"
    assert (await user.reply(await user.say(typed)))["text"] == "Answered: Codex has your answer."
    reply = {"answers": {"env": {"answers": ["staging"]}, "note": {"answers": [typed]}}}
    await final(user, placeholder)
    [answered] = answers(stack, request)
    assert answered["msg"]["result"] == reply, answered
    assert await stack.serves(typed) == 0, "the typed answer also ran as a turn of its own"

    # Nobody answers: the question expires like an approval; codex gets no answers, and the user reads why.
    placeholder = await user.sent(await user.say(f"{run} nobody answers [[mock:ask]]"))
    asked = await user.until_shown(lambda m: m["text"].startswith("❓") and m.get("reply_markup")
                                   and m["message_id"] > placeholder["message_id"])
    request = received(stack, "item/tool/requestUserInput")[-1]
    expired = await user.until_shown(lambda m: m["message_id"] == asked["message_id"] and "⌛ Expired" in m["text"],
                                     timeout=APPROVAL_TIMEOUT + 15)
    assert not expired.get("reply_markup"), expired
    [answered] = answers(stack, request)
    assert answered["msg"]["result"] == {"answers": {}}, answered
    failed = await final(user, placeholder)
    assert "kind=approval_timeout" in failed["text"], failed
    approval = next(a for a in (await stack.call(Api.APPROVALS))["approvals"] if a["task_id"] == task_of(placeholder))
    assert approval["kind"] == "question" and approval["state"] == "expired", approval
