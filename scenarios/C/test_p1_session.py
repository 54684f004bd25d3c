"""P1, the Codex session from the chat: stopping a turn, approvals codex withdraws, requests the relay refuses.

The full chain: Telegram -> bot -> manager -> node -> codex -> mock model. What the node and codex said to each
other is read back from the node's app-server traffic log (Stack.traffic).
"""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from harness.ends import mcp_asker
from harness.ends.telegram import FakeTelegram, TelegramUser, button
from harness.stack.stack import Stack
from runtime.protocol import Api, new_id

NODE = "p1"
APPROVAL_TIMEOUT = 4.0  # the node's timer for an undecided approval: P1-09 waits past it
NODE_SETTINGS = {"mcp_asker": True, "approval_timeout": APPROVAL_TIMEOUT}
_chats = itertools.count(720_001)


async def fresh_chat(tg: FakeTelegram) -> TelegramUser:
    user = tg.user(Stack.ADMIN, next(_chats))
    await user.pick_node(NODE)
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


async def running(stack: Stack, user: TelegramUser, prompt: str) -> tuple[dict[str, Any], str]:
    """Start a turn that waits on the model until stopped; its placeholder and its task_id (from the Stop button)."""
    placeholder = await user.sent(await user.say(f"{prompt} [[mock:hang]]"))
    stop = button(placeholder, "Stop")
    await stack.wait_served(prompt)  # codex is mid-turn, waiting on the model
    return placeholder, stop.partition(":")[2]


async def until_stopped(stack: Stack, user: TelegramUser, placeholder: dict[str, Any], task_id: str) -> dict[str, Any]:
    """The placeholder reads Stopped, without its button; the task ended cancelled. Returns the task."""
    shown = await user.until_shown(lambda m: m["message_id"] == placeholder["message_id"] and "Stopped" in m["text"])
    assert not shown.get("reply_markup"), f"the Stop button outlived its turn: {shown}"
    task = (await stack.call(Api.TASKS, {"task_id": task_id}))["task"]
    assert task["state"] == "cancelled" and task["error_kind"] == "cancelled", task
    assert task["result"]["retriable"] is False, task
    return dict(task)


@pytest.mark.case("P1-01")
async def test_stop(stack: Stack, tg: FakeTelegram) -> None:
    """the Stop button, /stop, and Cancel on an approval: turn/interrupt reaches codex, the user reads Stopped, the
    task ends cancelled (not an error), and the chat's next message runs normally"""
    user = await fresh_chat(tg)
    run = new_id("p101")
    cancelled = await stack.metric("tasks_cancelled")
    for how in ("button", "command"):
        placeholder, task_id = await running(stack, user, f"{run} stopped by {how}")
        if how == "button":
            toast = await user.alert(await user.tap(placeholder["message_id"], button(placeholder, "Stop")))
        else:
            toast = await user.reply(await user.say("/stop"))
        assert toast["text"] == "⏹ Stopping the running turn…", toast
        task = await until_stopped(stack, user, placeholder, task_id)
        # The interrupt reached codex, for that turn, and codex ended it as interrupted.
        turn_id = task["result"]["turn_id"]
        assert [s for s in sent(stack, "turn/interrupt") if s["msg"]["params"]["turnId"] == turn_id], \
            "no turn/interrupt reached codex"
        assert [r for r in received(stack, "turn/completed") if r["msg"]["params"]["turn"]["id"] == turn_id
                and r["msg"]["params"]["turn"]["status"] == "interrupted"], "codex did not end the turn interrupted"
    # Cancel on an approval (codex's own "decline and stop the turn") is the user's stop too, not an error.
    placeholder = await user.sent(await user.say(f"{run} cancelled at its approval [[mock:approve]]"))
    prompt = await user.until_shown(lambda m: "Approval needed" in m["text"] and m.get("reply_markup"))
    approval_id = next(line[4:] for line in prompt["text"].splitlines() if line.startswith("id: "))
    await stack.call(Api.APPROVALS_DECIDE, {"approval_id": approval_id, "decision": "cancel"})
    await until_stopped(stack, user, placeholder, button(placeholder, "Stop").partition(":")[2])
    assert await stack.metric("tasks_cancelled") == cancelled + 3  # counted apart from failures
    # The next message runs normally, on the same thread (codex sees every prompt of it).
    thread_id = task["thread_id"]
    await user.turn(f"{run} [[mock:history]] after the stops", "history: 4 user messages")
    assert (await stack.call(Api.CHAT, {"chat_key": f"tg:{user.chat_id}"}))["threads"][NODE] == thread_id
    idle = await user.reply(await user.say("/stop"))
    assert idle["text"] == "Nothing to stop: no turn is running in this chat.", idle


@pytest.mark.case("P1-09")
async def test_codex_withdraws_a_pending_approval(stack: Stack, tg: FakeTelegram) -> None:
    """codex resolves a pending approval itself (its turn was stopped): the prompt closes at once as withdrawn;
    the node sends codex no late decline and the manager records no late expiry"""
    user = await fresh_chat(tg)
    prompt = f"{new_id('p109')} needs an approval"
    placeholder = await user.sent(await user.say(f"{prompt} [[mock:approve]]"))
    prompt_msg = await user.until_shown(lambda m: "Approval needed" in m["text"] and m.get("reply_markup"))
    approval_id = next(line[4:] for line in prompt_msg["text"].splitlines() if line.startswith("id: "))
    request = received(stack, "item/commandExecution/requestApproval")[-1]  # logged before it was relayed
    await user.tap(placeholder["message_id"], button(placeholder, "Stop"))
    stopped = time.monotonic()
    closed = await user.until_shown(lambda m: m["message_id"] == prompt_msg["message_id"] and "Withdrawn" in m["text"])
    assert time.monotonic() - stopped < APPROVAL_TIMEOUT / 2, "the prompt waited for a timer, not for codex"
    assert not closed.get("reply_markup"), closed
    await until_stopped(stack, user, placeholder, button(placeholder, "Stop").partition(":")[2])
    # Codex resolved the request itself...
    assert [r for r in received(stack, "serverRequest/resolved") if r["msg"]["params"]["requestId"] ==
            request["msg"]["id"] and r["gen"] == request["gen"] and r["t"] >= request["t"]], "codex never resolved it"
    # ...and past the node's own approval timer, still nothing went back to codex, and nothing expired.
    created = next(a for a in (await stack.call(Api.APPROVALS))["approvals"] if a["approval_id"] == approval_id)
    await asyncio.sleep(max(0.0, created["created_at"] + APPROVAL_TIMEOUT + 1.0 - time.time()))
    assert not answers(stack, request), f"a late answer went to codex: {answers(stack, request)}"
    expired = [ln for ln in stack.procs[NODE].log_lines("approval_expired") if approval_id in ln]
    assert not expired, f"the node's timer fired for a withdrawn approval: {expired}"
    approval = next(a for a in (await stack.call(Api.APPROVALS))["approvals"] if a["approval_id"] == approval_id)
    assert approval["state"] == "withdrawn" and approval["decided_by"] in ("codex", "task_ended"), approval


@pytest.mark.case("P1-11")
async def test_unsupported_request_is_refused(stack: Stack, tg: FakeTelegram) -> None:
    """an MCP server asks the user for input (mcpServer/elicitation/request): codex gets a decline at once, in the
    shape of that request's response; the user reads what was refused; the turn finishes"""
    user = await fresh_chat(tg)
    prompt = f"{new_id('p111')} asks the user"
    placeholder = await user.sent(await user.say(f"{prompt} [[mock:elicit]]"))
    answer = await user.until_shown(lambda m: "tool said:" in m["text"] and "⏳" not in m["text"])
    # The MCP server got the decline, and the model read it back in the tool's output.
    # The answer is Markdown, so the JSON's escaped quotes (\\") read as plain quotes in Telegram (P2-01).
    assert 'the user answered: {"action": "decline"}' in answer["text"], answer
    note = await user.until_shown(lambda m: m["text"].startswith("ℹ️"), timeout=10)
    assert mcp_asker.NAME in note["text"] and mcp_asker.QUESTION in note["text"] and "declined" in note["text"], note
    [request] = received(stack, "mcpServer/elicitation/request")[-1:]
    [reply] = answers(stack, request)
    assert reply["msg"] == {"id": request["msg"]["id"], "result": {"action": "decline", "content": None}}, reply
    assert reply["t"] - request["t"] < 0.5, f"refused after {reply['t'] - request['t']:.2f}s, not at once"
    task_id = button(placeholder, "Stop").partition(":")[2]  # the placeholder's button named its task
    task = (await stack.call(Api.TASKS, {"task_id": task_id}))["task"]
    assert task["state"] == "done" and task["result"]["notes"] == [note["text"].removeprefix("ℹ️ ")], task
