"""P1, how a turn reads in the chat: its live activity (/verbose), approval prompts that show what codex asks and
offer only what codex offers, the final answer posted anew or edited in (/result), and its token usage (/usage).

The full chain: Telegram -> bot -> manager -> node -> codex -> mock model. What codex told the node is read back
from the node's app-server traffic log (Stack.traffic); what the model provider charged, from the mock's tally.
"""
from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

import pytest

from harness.ends.telegram import FakeTelegram, TelegramUser, button
from harness.ends.upstream import PATCH_FILE, WORK_CMD, prompt_key, work_file
from harness.stack.stack import Stack
from runtime.protocol import Api, new_id

NODE = "p1t"       # read-only sandbox (the stack's default): a file change asks for approval
WRITER = "p1w"     # workspace-write: a `work` turn writes its file without asking
INTERVAL = 1.0     # the bot's progress_interval in every stack (Stack.start_bot)
SLACK = 0.05       # clock granularity between the bot's timer and the fake's call times
_chats = itertools.count(730_001)


async def chat_on(tg: FakeTelegram, node_id: str = NODE) -> TelegramUser:
    user = tg.user(Stack.ADMIN, next(_chats))
    await user.pick_node(node_id)
    return user


def received(stack: Stack, node_id: str, method: str) -> list[dict[str, Any]]:
    """What codex sent the node calling `method`, oldest first."""
    return [line for line in stack.traffic(node_id) if line["dir"] == "<<" and line["msg"].get("method") == method]


def labels(message: dict[str, Any]) -> list[str]:
    return [b["text"] for row in (message.get("reply_markup") or {}).get("inline_keyboard", []) for b in row]


def approval_id(prompt: dict[str, Any]) -> str:
    return next(line[4:] for line in prompt["text"].splitlines() if line.startswith("id: "))


async def approval(user: TelegramUser, since_id: int = 0) -> dict[str, Any]:
    """The next approval prompt in the chat (a bot message after `since_id`, with its buttons)."""
    return await user.until_shown(lambda m: m["message_id"] > since_id and "Approval needed" in m["text"]
                                  and m.get("reply_markup"))


def answered(text: str, after: int = 0) -> Any:
    """A final text: shown in a bot message after message `after`, with no turn still running in it."""
    return lambda m: m["message_id"] > after and text in m["text"] and "⏳" not in m["text"]


async def placeholder_edits(tg: FakeTelegram, user: TelegramUser, placeholder: dict[str, Any],
                            since: int) -> list[dict[str, Any]]:
    return [c for c in await tg.calls("editMessageText", user.chat_id, since)
            if c["params"].get("message_id") == placeholder["message_id"]]


def spaced(writes: list[dict[str, Any]]) -> list[float]:
    """Gaps between a message's successive writes, 429s included: each one Telegram saw."""
    return [b["time"] - a["time"] for a, b in itertools.pairwise(writes)]


# ---- P1-07 -----------------------------------------------------------------------------------------------------

async def work_turn(tg: FakeTelegram, user: TelegramUser, prompt: str,
                    think: float = 2.0) -> tuple[list[dict[str, Any]], str]:
    """A `work` turn (a command, a new file, then `think` seconds before its answer): the writes to its placeholder
    (its sendMessage, then its edits), and the texts it showed while the turn ran."""
    since = await user.say(f"{prompt} [[mock:work={think:g}]]")
    placeholder = await user.sent(since)
    await user.until_shown(answered("tool said:"))
    await user.until_shown(lambda m: m["message_id"] == placeholder["message_id"] and "⏳" not in m["text"])
    edits = await placeholder_edits(tg, user, placeholder, since)
    running = "\n".join(e["params"]["text"] for e in edits if "⏳ still working" in e["params"]["text"])
    sent = (await tg.calls("sendMessage", user.chat_id, since))[0]
    assert sent["response"]["result"]["message_id"] == placeholder["message_id"], sent
    return [sent, *edits], running


@pytest.mark.case("P1-07")
async def test_progress_shows_commands_and_files(stack: Stack, tg: FakeTelegram) -> None:
    """a turn that runs a command and writes a file: the progress message shows them as codex starts and finishes
    them, as much as the chat's /verbose asks (0: the agent's text; 1: + the command and the file; 2: + the command's
    output and the diff), edited at most once per progress_interval, and after a 429 not before its retry_after"""
    if WRITER not in stack.procs:
        await stack.add_node(WRITER, sandbox="workspace-write")
    run = new_id("p107")
    users = {level: await chat_on(tg, WRITER) for level in (0, 1, 2)}
    for level, user in users.items():
        set_to = await user.reply(await user.say(f"/verbose {level}"))
        assert set_to["text"].startswith(f"Verbosity set to {level}:"), set_to
    turns = await asyncio.gather(*(work_turn(tg, u, f"{run} at verbose {level}") for level, u in users.items()))
    shown = {level: running for level, (_, running) in zip(users, turns, strict=True)}
    command, output = f"$ {WORK_CMD} ✓", "    relay-work-output"
    for level in (0, 1, 2):
        wrote = f"✏️ {work_file(f'{run} at verbose {level}')} (add) ✓"
        lines = shown[level].splitlines()
        assert (command in lines, wrote in lines) == ((True, True) if level else (False, False)), (level, shown)
        assert (output in lines, "    patched by mock" in lines) == ((True, True) if level == 2 else (False, False)), \
            (level, shown)
        assert (stack.root / "nodes" / WRITER / "cwd" / work_file(f"{run} at verbose {level}")).read_text() == \
            "patched by mock\n"
    for level, (writes, _) in zip(users, turns, strict=True):
        assert len(writes) >= 3 and min(spaced(writes)) >= INTERVAL - SLACK, (level, spaced(writes))
    # The setting is the chat's: another chat on the node shows the default, 1.
    assert (await stack.call(Api.CHAT, {"chat_key": f"tg:{users[2].chat_id}"}))["verbose"] == 2
    assert (await stack.call(Api.CHAT, {"chat_key": f"tg:{(await chat_on(tg, WRITER)).chat_id}"}))["verbose"] == 1

    # Telegram says 429 to an edit: the next edit of the message waits for retry_after, and the turn still shows.
    user = users[1]
    await tg.fault("editMessageText", status=429, retry_after=2)
    try:
        writes, running = await work_turn(tg, user, f"{run} under a flood wait", think=4.0)
    finally:
        await tg.clear_faults()
    assert [w["status"] for w in writes][:3] == [200, 429, 200], writes
    assert writes[2]["time"] - writes[1]["time"] >= 2.0, "an edit went before the 429's retry_after"
    assert min(spaced(writes)) >= INTERVAL - SLACK, spaced(writes)
    assert f"✏️ {work_file(f'{run} under a flood wait')} (add) ✓" in running.splitlines(), running


# ---- P1-08 -----------------------------------------------------------------------------------------------------

@pytest.mark.case("P1-08")
async def test_approval_prompts_show_what_codex_asks(stack: Stack, tg: FakeTelegram) -> None:
    """a file-change approval shows its paths and diff (from the fileChange item codex sent before asking; a long diff
    as a document); a command approval shows command, cwd and reason; only the decisions codex offers are buttons,
    and one it does not offer is refused without reaching codex"""
    user, run = await chat_on(tg), new_id("p108")
    written = stack.root / "nodes" / NODE / "cwd" / PATCH_FILE
    written.unlink(missing_ok=True)

    # A short file change: its path and diff in the prompt; every decision, since codex restricts none.
    await user.say(f"{run} a short patch [[mock:patch]]")
    prompt = await approval(user)
    request = received(stack, NODE, "item/fileChange/requestApproval")[-1]
    item = next(r for r in received(stack, NODE, "item/started") if r["gen"] == request["gen"]
                and r["msg"]["params"]["item"]["id"] == request["msg"]["params"]["itemId"])
    assert item["t"] <= request["t"] and "availableDecisions" not in request["msg"]["params"], (item, request)
    [change] = item["msg"]["params"]["item"]["changes"]
    assert change["path"].endswith(f"/{PATCH_FILE}") and change["diff"] == "patched by mock\n", change
    assert f"files:\n• {PATCH_FILE} (add)\n" in prompt["text"], prompt
    assert f"diff:\n*** add: {PATCH_FILE}\n+patched by mock\nid: " in prompt["text"], prompt
    assert labels(prompt) == ["✅ Approve", "✅ Approve for session", "❌ Decline", "⏹ Decline and stop the turn"]
    await user.alert(await user.tap(prompt["message_id"], button(prompt, "✅ Approve")))
    await user.until_shown(answered("tool said:", prompt["message_id"]))
    assert written.read_text() == "patched by mock\n"
    written.unlink()

    # A long diff: the whole of it as a document above the prompt, which names it.
    await user.say(f"{run} a long patch [[mock:patch=300]]")
    prompt = await approval(user, prompt["message_id"])
    aid = approval_id(prompt)
    [doc] = [m for m in await user.messages() if m.get("document") and m["message_id"] < prompt["message_id"]
             and aid in m["text"]]
    assert doc["document"]["file_name"] == f"{aid}.diff", doc
    diff = (await tg.file(doc["document"]["file_id"])).decode().splitlines()
    assert diff[0] == f"*** add: {PATCH_FILE}" and diff[1:] == [f"+patched by mock, line {i}" for i in range(1, 301)]
    assert f"diff: 301 lines, in the document {aid}.diff above" in prompt["text"] and "line 300" not in prompt["text"]
    await user.alert(await user.tap(prompt["message_id"], button(prompt, "Decline")))
    await user.until_shown(answered("patch rejected", prompt["message_id"]))
    assert not written.exists()

    # A command: its command line, cwd and reason, and only the decisions codex offers (no decline for an
    # escalated command in codex 0.171; the execpolicy amendment would persist a rule on the node: not offered).
    await user.say(f"{run} a command [[mock:approve]]")
    prompt = await approval(user, prompt["message_id"])
    request = received(stack, NODE, "item/commandExecution/requestApproval")[-1]
    params = request["msg"]["params"]
    assert [d if isinstance(d, str) else next(iter(d)) for d in params["availableDecisions"]] == \
        ["accept", "acceptWithExecpolicyAmendment", "cancel"], params
    for line in (f"command: {params['command']}", f"cwd: {params['cwd']}", f"reason: {params['reason']}"):
        assert line in prompt["text"].splitlines(), (line, prompt)
    assert labels(prompt) == ["✅ Approve", "⏹ Decline and stop the turn"], prompt
    refused = await user.reply(await user.say(f"/decline {approval_id(prompt)}"))
    assert "codex does not offer `decline`" in refused["text"] and "it offers: accept, cancel" in refused["text"], \
        refused
    pending = (await stack.call(Api.APPROVALS, {"state": "pending"}))["approvals"]
    assert approval_id(prompt) in [a["approval_id"] for a in pending], "a refused decision changed the approval"
    assert not [ln for ln in stack.traffic(NODE) if ln["dir"] == ">>" and "method" not in ln["msg"]
                and ln["msg"].get("id") == request["msg"]["id"] and ln["t"] > request["t"]], "it reached codex"
    await user.alert(await user.tap(prompt["message_id"], button(prompt, "✅ Approve")))
    answer = await user.until_shown(answered("tool said:", prompt["message_id"]))
    assert "relay-approved" in answer["text"] and "exited with code 0" in answer["text"], answer


# ---- P1-12 -----------------------------------------------------------------------------------------------------

@pytest.mark.case("P1-12")
async def test_result_send_or_replace(stack: Stack, tg: FakeTelegram) -> None:
    """`/result send` (the default) posts the final answer as a new message, so Telegram notifies, and closes the
    progress message; `/result replace` edits the progress message into the answer; the mode is the chat's"""
    user, other, run = await chat_on(tg), await chat_on(tg), new_id("p112")
    shown = await user.reply(await user.say("/result"))
    assert shown["text"].startswith("Result mode for this chat: send:"), shown

    since = await user.say(f"{run} comes as a new message")
    placeholder = await user.sent(since)
    answer = await user.until_shown(answered(f"mock reply: {run} comes as a new message"))
    assert answer["message_id"] > placeholder["message_id"] and answer["original"]["text"] == answer["text"], answer
    [sent] = [c for c in await tg.calls("sendMessage", user.chat_id, since) if c["params"]["text"] == answer["text"]]
    assert not sent["params"].get("disable_notification"), sent
    closed = await user.until_shown(lambda m: m["message_id"] == placeholder["message_id"] and "⏳" not in m["text"])
    assert closed["text"] == f"✅ Done on {NODE}; the answer is below." and not closed.get("reply_markup"), closed

    set_to = await user.reply(await user.say("/result replace"))
    assert set_to["text"].startswith("Result mode set to replace:"), set_to
    since = await user.say(f"{run} replaces its placeholder")
    placeholder = await user.sent(since)
    answer = await user.until_shown(answered(f"mock reply: {run} replaces its placeholder"))
    assert answer["message_id"] == placeholder["message_id"] and not answer.get("reply_markup"), answer
    assert [c["params"]["text"] for c in await tg.calls("sendMessage", user.chat_id, since)] == [placeholder["text"]]
    chat = await stack.call(Api.CHAT, {"chat_key": f"tg:{user.chat_id}"})
    assert chat["result_mode"] == "replace", chat
    assert (await stack.call(Api.CHAT, {"chat_key": f"tg:{other.chat_id}"}))["result_mode"] == "send"


# ---- P1-13 -----------------------------------------------------------------------------------------------------

@pytest.mark.case("P1-13")
async def test_token_usage_and_limits(stack: Stack, tg: FakeTelegram) -> None:
    """the final message carries the turn's token usage, as the model provider reported it over the turn's requests
    (codex's thread/tokenUsage/updated); /usage says plainly that this login (a custom provider) has no limits"""
    user, run = await chat_on(tg), new_id("p113")
    prompt = f"{run} costs two requests"
    await user.say(f"{prompt} [[mock:approve]]")
    asked = await approval(user)
    await user.alert(await user.tap(asked["message_id"], button(asked, "✅ Approve")))
    answer = await user.until_shown(answered("tool said:", asked["message_id"]))
    charged = (await stack.upstream("GET", "/_mock/stats"))["usage"][prompt_key(prompt)]
    assert charged["responses"] == 2 and charged["cached_input_tokens"] > 0, charged
    line = answer["text"].splitlines()[-1]
    expected = (f"🔢 {charged['total_tokens']:,} tokens: in {charged['input_tokens']:,} "
                f"({charged['cached_input_tokens']:,} cached), out {charged['output_tokens']:,}; context ")
    assert line.startswith(expected) and re.fullmatch(r".*; context [\d,]+ of [\d,]+ \(\d+%\)", line), (line, charged)

    shown = await user.reply(await user.say("/usage"))
    assert shown["text"].startswith(f"This login has no usage limits to show: Codex on {NODE} is not signed in with "
                                    "a ChatGPT account"), shown
    read = [ln for ln in stack.traffic(NODE) if ln["dir"] == ">>" and ln["msg"].get("method") ==
            "account/rateLimits/read"]
    assert read, "/usage never asked codex"
    [reply] = [ln for ln in stack.traffic(NODE) if ln["dir"] == "<<" and ln["msg"].get("id") == read[-1]["msg"]["id"]
               and ln["gen"] == read[-1]["gen"] and "method" not in ln["msg"]]
    assert reply["msg"]["error"]["message"] in shown["text"], (reply, shown)
