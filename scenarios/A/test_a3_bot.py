"""A3: the real bot against the fake Bot API, with the real manager and one real node (real codex, mock model)."""
from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.ends.telegram import FakeTelegram, TelegramUser
from harness.stack import paths
from harness.stack.procs import Proc
from harness.stack.stack import Stack
from runtime.backoff import Backoff
from runtime.protocol import Api, new_id

NODE = "a3n1"
_chats = itertools.count(300_001)  # every run talks in a chat of its own, so no run sees another's state
KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
UNREADABLE = ("no_date", "entity_no_offset", "wrong_type", "edited_channel_post", "unknown_kind")  # skipped
HELP = "Codex Relay:"


@pytest.fixture(scope="module")
async def tg(stack: Stack) -> AsyncIterator[FakeTelegram]:
    await stack.add_node(NODE)
    # One finished turn, so /thread has a real thread to list and its button has one to pick.
    assert (await stack.result(Api.DISPATCH_TEXT, {"chat_key": new_id("a3seed"), "node_id": NODE,
                                                   "text": "seed a thread"}))["ok"]
    yield await stack.start_bot()


def fresh(tg: FakeTelegram, user_id: int) -> TelegramUser:
    return tg.user(user_id, next(_chats))


async def ask(user: TelegramUser, text: str) -> dict[str, Any]:
    """Type `text`; the message the bot answered with (message_id, text, reply_markup)."""
    return await user.sent(await user.say(text))


def button(message: dict[str, Any], item: str) -> tuple[str, str]:
    """The (label, callback data) of the button that picks `item` (a node, model or thread id)."""
    for row in (message.get("reply_markup") or {}).get("inline_keyboard", []):
        for b in row:
            if str(b["callback_data"]).endswith(f":{item}"):
                return str(b["text"]), str(b["callback_data"])
    raise AssertionError(f"no button for {item!r} under {message['text']!r}")


def listed(text: str) -> list[str]:
    """The ids of a listing's bullet lines (`• <id>: ...`), in order."""
    return [ln[2:].split(":", 1)[0].removesuffix(" ← selected") for ln in text.splitlines() if ln.startswith("• ")]


async def chat_route(stack: Stack, user: TelegramUser) -> dict[str, Any]:
    return await stack.call(Api.CHAT, {"chat_key": f"tg:{user.chat_id}"})


async def token_ids(stack: Stack) -> list[str]:
    return [t["token_id"] for t in (await stack.call(Api.TOKENS, method="GET"))["tokens"]]


async def logged(proc: Proc, op: str, timeout: float = 10.0, **fields: object) -> dict[str, str]:
    """The first `op` line in `proc`'s log carrying `fields`; a handler logs its outcome after it replies."""
    async for _ in Backoff(0.05, factor=1).tries(timeout):
        for line in proc.log_lines(op):
            kv = {k: v[1:-1] if v.startswith('"') else v for k, v in KV.findall(line)}
            if all(kv.get(k) == str(v) for k, v in fields.items()):
                return kv
    raise AssertionError(f"{proc.name} logged no op={op} with {fields} within {timeout}s")


async def manager_paths(stack: Stack, user: TelegramUser, cmd: str) -> set[str]:
    """The control paths the bot called while serving `cmd` in this chat, joined by the command's trace_id."""
    bot = stack.procs["bot"]
    trace_id = (await logged(bot, "command", cmd=cmd, chat_id=user.chat_id))["trace_id"]
    return {dict(KV.findall(ln))["path"] for ln in bot.log_lines("manager_call") if f"trace_id={trace_id} " in ln}


@pytest.mark.case("A3-01")
async def test_unauthorised_token(stack: Stack, tg: FakeTelegram) -> None:
    """/token from a stranger, and from an allowed non-admin, is refused: `unauthorized`; no token is created"""
    before = await token_ids(stack)
    stranger = await ask(fresh(tg, Stack.STRANGER), f"/token generate note={new_id('a301')}")
    assert stranger["text"].startswith("unauthorized:") and str(Stack.STRANGER) in stranger["text"]
    user = await ask(fresh(tg, Stack.USER), f"/token generate note={new_id('a301')}")
    assert user["text"].startswith("unauthorized:") and "for admins" in user["text"]
    assert await token_ids(stack) == before


@pytest.mark.case("A3-02")
async def test_token_without_arguments(stack: Stack, tg: FakeTelegram) -> None:
    """/token with no (or an unknown) subcommand answers the usage text and changes nothing"""
    before = await token_ids(stack)
    admin = fresh(tg, Stack.ADMIN)
    for text in ("/token", "/token frobnicate"):
        usage = (await ask(admin, text))["text"]
        assert usage.startswith("Usage:"), usage
        assert all(sub in usage for sub in ("/token generate", "/token list", "/token revoke")), usage
    assert await token_ids(stack) == before


@pytest.mark.case("A3-03")
async def test_approve_without_arguments(stack: Stack, tg: FakeTelegram) -> None:
    """/approve with no (or too many) arguments answers the usage text and decides nothing"""
    before = (await stack.call(Api.APPROVALS))["approvals"]
    user = fresh(tg, Stack.USER)
    for text in ("/approve", "/approve a b c"):
        usage = (await ask(user, text))["text"]
        assert usage.startswith("Usage: /approve <approval_id>"), usage
    assert (await stack.call(Api.APPROVALS))["approvals"] == before


@pytest.mark.case("A3-04")
async def test_callback_selects_offline_node(stack: Stack, tg: FakeTelegram) -> None:
    """a node button tapped after its node went offline: the alert contains `offline` and nothing is selected"""
    user = fresh(tg, Stack.USER)
    listing = await ask(user, "/node")
    label, data = button(listing, NODE)
    assert label.endswith("(online)"), label
    async with stack.node_cut_off(NODE):
        alert = await user.alert(await user.tap(listing["message_id"], data))
        assert "offline" in alert["text"] and NODE in alert["text"] and alert["show_alert"], alert
        assert (await chat_route(stack, user))["node_id"] is None


@pytest.mark.case("A3-05")
async def test_token_generate(stack: Stack, tg: FakeTelegram) -> None:
    """/token generate answers `token created` and the token_id, which the manager holds for that node"""
    node_id, note = new_id("a305"), new_id("note")
    text = (await ask(fresh(tg, Stack.ADMIN), f"/token generate node={node_id} note={note}"))["text"]
    assert text.startswith("token created"), text
    token_id = re.search(r"^token_id: (\S+)$", text, re.M)
    assert token_id is not None, text
    stored = [t for t in (await stack.call(Api.TOKENS, method="GET"))["tokens"] if t["token_id"] == token_id[1]]
    assert len(stored) == 1 and stored[0]["node_id"] == node_id and stored[0]["note"] == note, stored
    assert stored[0]["revoked_at"] is None and f"node: {node_id}" in text and re.search(r"^token: \S+$", text, re.M)
    await stack.call(Api.TOKENS_REVOKE, {"token_id": token_id[1]})


@pytest.mark.case("A3-06")
async def test_command_routing(stack: Stack, tg: FakeTelegram) -> None:
    """/node /status /model /thread /token /approve each reach their manager capability, and show what it answered"""
    user = fresh(tg, Stack.ADMIN)
    servers = await stack.call(Api.SERVERS)
    assert sorted(listed((await ask(user, "/node"))["text"])) == sorted(s["node_id"] for s in servers["servers"])

    assert (await ask(user, f"/node {NODE}"))["text"] == f"Node {NODE} selected for this chat."
    assert (await ask(user, "/node nosuch"))["text"] == "Unknown node nosuch. /node lists the nodes."
    assert (await chat_route(stack, user))["node_id"] == NODE

    status = (await ask(user, "/status"))["text"]
    state = await stack.call(Api.STATUS, {"node_id": NODE})
    assert status.startswith(f"Node {NODE}: online") and f"open tasks: {state['open_tasks']}" in status, status

    models = await stack.call(Api.APPSERVER, {"node_id": NODE, "method": "model/list", "params": {}})
    assert listed((await ask(user, "/model"))["text"]) == [m["id"] for m in models["result"]["data"]]

    threads = await stack.call(Api.APPSERVER, {"node_id": NODE, "method": "thread/list", "params": {}})
    shown = listed((await ask(user, "/thread"))["text"])
    assert shown and shown == [t["id"] for t in threads["result"]["data"]][:20]

    assert listed((await ask(user, "/token list"))["text"]) == await token_ids(stack)

    approval_id = new_id("appr")
    refused = (await ask(user, f"/approve {approval_id}"))["text"]
    assert "kind=not_found" in refused and approval_id in refused, refused

    for cmd, path in (("/node", Api.SERVERS), ("/status", Api.STATUS), ("/model", Api.APPSERVER),
                      ("/thread", Api.APPSERVER), ("/token", Api.TOKENS), ("/approve", Api.APPROVALS_DECIDE)):
        assert path.value in await manager_paths(stack, user, cmd), f"{cmd} never called {path.value}"


@pytest.mark.case("A3-07")
async def test_buttons_match_commands(stack: Stack, tg: FakeTelegram) -> None:
    """node, model and thread buttons give the same answer and the same manager state as their text commands"""
    by_button, by_text = fresh(tg, Stack.USER), fresh(tg, Stack.USER)

    async def tap(command: str, item: str) -> str:
        listing = await ask(by_button, command)
        _, data = button(listing, item)
        return str((await by_button.alert(await by_button.tap(listing["message_id"], data)))["text"])

    toast = await tap("/node", NODE)
    assert toast == (await ask(by_text, f"/node {NODE}"))["text"] == f"Node {NODE} selected for this chat."
    shown = await by_button.until_shown(lambda m: "← selected" in m["text"])
    assert f"• {NODE}: online ← selected" in shown["text"]

    models = await stack.call(Api.APPSERVER, {"node_id": NODE, "method": "model/list", "params": {}})
    model = models["result"]["data"][-1]["id"]  # not the default one, so the pick shows in the route
    toast = await tap("/model", model)
    assert toast == (await ask(by_text, f"/model {model}"))["text"] and model in toast

    threads = await stack.call(Api.APPSERVER, {"node_id": NODE, "method": "thread/list", "params": {}})
    thread_id = threads["result"]["data"][0]["id"]
    toast = await tap("/thread", thread_id)
    assert toast == (await ask(by_text, f"/thread {thread_id}"))["text"] and thread_id in toast

    pressed, typed = await chat_route(stack, by_button), await chat_route(stack, by_text)
    assert pressed["node_id"] == typed["node_id"] == NODE
    assert pressed["model"] == typed["model"] == model
    assert pressed["threads"][NODE] == typed["threads"][NODE] == thread_id


@pytest.mark.case("A3-08")
async def test_config_value_write_invalid_json(stack: Stack, tg: FakeTelegram) -> None:
    """/config_value_write with invalid JSON, or JSON of the wrong shape, gets a clear error; nothing is written;
    and it is an admin's command: a user is refused, naming who may"""
    config = Path(stack.node_settings[NODE]["codex_home"]) / "config.toml"
    before = config.read_text()
    refused = (await ask(fresh(tg, Stack.USER), '/config_value_write {"key_path": "model", "value": "x"}'))["text"]
    assert refused.startswith("unauthorized: /config_value_write is for admins"), refused
    user = fresh(tg, Stack.ADMIN)
    bad = (await ask(user, '/config_value_write {"key_path": "model", "value": }'))["text"]
    assert bad.startswith("Invalid JSON:") and "line 1, column" in bad and '"key_path"' in bad, bad
    wrong = (await ask(user, '/config_value_write ["model", "gpt-5.5"]'))["text"]
    assert wrong.startswith("Invalid request:") and '"key_path"' in wrong, wrong
    assert config.read_text() == before


@pytest.mark.case("A3-09")
async def test_manager_unavailable(stack: Stack, tg: FakeTelegram) -> None:
    """with the manager unreachable the bot answers a clear `manager unavailable`, stays up and recovers"""
    assert stack.toxics is not None
    bot, user = stack.procs["bot"], fresh(tg, Stack.USER)
    starts = bot.starts
    async with stack.toxics.link_down(stack.bot_manager_link):
        down = (await ask(user, "/node"))["text"]
        assert "manager unavailable" in down and "kind=manager_unavailable" in down, down
        assert bot.alive
    back = (await ask(user, "/node"))["text"]
    assert NODE in listed(back), back
    assert bot.alive and bot.starts == starts


@pytest.mark.case("A3-10")
async def test_telegram_transient_failure(stack: Stack, tg: FakeTelegram) -> None:
    """sendMessage answered 429 (retry_after=1), then 502: retried after the wait, and shown exactly once"""
    user = fresh(tg, Stack.USER)
    since = await tg.last_seq()
    await tg.fault("sendMessage", status=429, retry_after=1)
    await tg.fault("sendMessage", status=502)
    try:
        shown = await ask(user, "/help")
        await logged(stack.procs["bot"], "command", cmd="/help", chat_id=user.chat_id, outcome="ok")
    finally:
        await tg.clear_faults()
    attempts = await tg.calls("sendMessage", user.chat_id, since)
    assert [c["status"] for c in attempts] == [429, 502, 200], attempts
    assert attempts[1]["time"] - attempts[0]["time"] >= 1.0, "the retry did not wait for retry_after"
    from_bot = [m for m in await user.messages() if m["from_bot"]]
    assert [m["message_id"] for m in from_bot] == [shown["message_id"]], from_bot
    assert shown["text"].startswith("Codex Relay:")


def tracebacks(proc: Proc) -> int:
    return sum("Traceback" in ln for ln in proc.log_lines())


async def helped_soon(tg: FakeTelegram, user: TelegramUser, since: int, within: float = 5.0) -> int:
    """A good /help is answered within seconds, and the bot did not spin; the number of getUpdates since `since`."""
    started = time.monotonic()
    assert (await ask(user, "/help"))["text"].startswith(HELP)
    assert time.monotonic() - started < within, f"/help took {time.monotonic() - started:.1f}s"
    polls = len(await tg.calls("getUpdates", since=since))
    assert polls <= 10, f"{polls} getUpdates calls: the bot polled in a loop"
    return polls


@pytest.mark.case("S-06")
async def test_hostile_updates(stack: Stack, tg: FakeTelegram) -> None:
    """each hostile update is skipped (logged with its update_id) or answered, a getUpdates body that is not
    JSON is backed off from, `/cmd@otherbot` in a group is ignored; a good message is answered in seconds"""
    bot = stack.procs["bot"]
    crashes = tracebacks(bot)
    for shape in UNREADABLE:  # PTB could not parse these, or the bot never subscribed to them
        user = fresh(tg, Stack.USER)
        since = await tg.last_seq()
        update_id = await user.hostile(shape)
        await helped_soon(tg, user, since)
        skipped = await logged(bot, "update_skipped", update_id=update_id)
        assert int(skipped["skipped_total"]) >= 1, skipped
        assert len([m for m in await user.messages() if m["from_bot"]]) == 1, f"{shape} drew a reply"

    user = fresh(tg, Stack.USER)  # a message without `from`: nobody to authorise, skipped quietly
    since = await tg.last_seq()
    update_id = await user.hostile("no_from")
    await helped_soon(tg, user, since)
    await logged(bot, "update_ignored", update_id=update_id, reason="no sender")
    assert len([m for m in await user.messages() if m["from_bot"]]) == 1

    user = fresh(tg, Stack.USER)  # a button on an inline message: no chat, but the press is answered
    since = await tg.last_seq()
    await user.hostile("callback_no_message")
    alert = await user.alert(since)
    assert alert["text"].startswith("This button is no longer valid") and alert["show_alert"], alert
    await helped_soon(tg, user, since)

    # getUpdates answered by a proxy's HTML page for 3 s: PTB's retry loop backs off, 1 s growing by 1.5x.
    since = await tg.last_seq()
    seen = len(bot.log_lines("telegram_poll_failed"))
    await tg.fault("getUpdates", body="<html><body>502 Bad Gateway</body></html>", count=10_000)
    try:
        await asyncio.sleep(3.0)
    finally:
        await tg.clear_faults()
    broken = [c for c in await tg.calls("getUpdates", since=since) if "raw" in c["response"]]
    assert 1 <= len(broken) <= 5, f"{len(broken)} broken getUpdates answers in 3 s: the bot did not back off"
    assert len(bot.log_lines("telegram_poll_failed")) > seen
    await helped_soon(tg, fresh(tg, Stack.USER), since)

    # In a group, a command for another bot is none of ours; one addressed to us by name is answered.
    username = (await logged(bot, "bot_ready"))["username"]
    group = tg.user(Stack.USER, -next(_chats))
    for text in ("/nosuch@other_bot", "/help@other_bot"):
        await group.say(text)
    assert (await ask(group, f"/help@{username}"))["text"].startswith(HELP)
    assert (await ask(group, f"/nosuch@{username}"))["text"].startswith("Unknown command")
    assert len([m for m in await group.messages() if m["from_bot"]]) == 2, await group.messages()

    assert tracebacks(bot) == crashes, "the bot logged a traceback"


# ---- S-01: the permission matrix, cell by cell ---------------------------------------------------------------

README_MATRIX = re.compile(r"<!-- permissions: begin -->\n(.*?)\n<!-- permissions: end -->", re.S)
ROLES = {"stranger": Stack.STRANGER, "user": Stack.USER, "admin": Stack.ADMIN}


def readme_matrix() -> dict[str, dict[str, bool]]:
    """The README's permission table: row label -> {role: may use it}."""
    block = README_MATRIX.search((paths.REPO_ROOT / "README.md").read_text())
    assert block is not None, "README.md has no permission table"
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in block.group(1).splitlines()[2:]]
    return {r[0]: {role: r[1 + i] == "yes" for i, role in enumerate(ROLES)} for r in rows}


def probes(label: str) -> list[tuple[str, str]]:
    """What a cell sends: ("say", text) or ("press", callback data). Each asks for nothing that changes another
    case's state: commands without arguments, picks in the cell's own chat, an approval id that does not exist."""
    if label.startswith("`/"):
        return [("say", label.strip("`"))]
    if label.startswith("button "):
        prefix = label.removeprefix("button ").strip("`")
        arg = {"node:": NODE, "model:": "gpt-5.5", "thread:": "new", "ap:": f"{new_id('appr')}:a",
               "stop:": new_id("task"), "eff:": "high", "tstart:": "x", "tread:": new_id("thr"),
               "tfork:": new_id("thr"), "tarch:": new_id("thr"), "tunarch:": new_id("thr"),
               "tw:": "gone:node:0", "qa:": f"{new_id('appr')}:0:0"}[prefix]
        return [("press", prefix + arg)]
    if label.startswith("choice "):
        # A choice inside a command's flow, which needs a node and a wizard: P1-03 (scenarios/C/test_p1_threads.py)
        # walks it, a user is not offered danger-full-access and an admin is (a wizard's buttons carry an index into
        # what it offered, so a user cannot name it).
        return []
    if label == "text":
        return [("say", f"hello {new_id('s01')}")]
    assert label == "other", f"a permission row the scenario cannot send: {label}"
    return [("say", "/nosuchcommand"), ("press", "zz:gone")]


async def answer(tg: FakeTelegram, role: str, kind: str, what: str) -> str:
    """The bot's answer to one probe, in a chat of its own: the reply, or the alert on a press."""
    user = fresh(tg, ROLES[role])
    if kind == "say":
        return str((await ask(user, what))["text"])
    shown = await ask(user, "/help")  # any message of the bot's to press a button on (a refusal, for a stranger)
    return str((await user.press(shown["message_id"], what))["text"])


@pytest.mark.case("S-01")
async def test_permission_matrix(stack: Stack, tg: FakeTelegram) -> None:
    """every command, button, text and unknown command, from a stranger, a user and an admin: allowed or refused
    exactly as the README's table says; a refusal names who may and the user's id; no token is made"""
    matrix, before = readme_matrix(), await token_ids(stack)
    cells = [(label, role, kind, what) for label, row in matrix.items() for role in ROLES for kind, what in probes(label)]
    answers = await asyncio.gather(*(answer(tg, role, kind, what) for _, role, kind, what in cells))
    wrong = []
    for (label, role, kind, what), text in zip(cells, answers, strict=True):
        refused = text.startswith("unauthorized:")
        admins_only = not matrix[label]["user"]
        names_who = ("is for admins" if admins_only else "is for allowed users and admins") in text
        if refused == matrix[label][role] or (refused and not (names_who and str(ROLES[role]) in text)):
            wrong.append(f"{role} {kind} {what!r} ({label}): {text!r}")
    assert not wrong, "answers that break the permission matrix:\n" + "\n".join(wrong)
    assert len(cells) >= 3 * len(matrix), cells
    assert await token_ids(stack) == before

    # User management, the admins' way in: a stranger an admin adds is a user at once, and refused once removed.
    admin, newcomer = fresh(tg, Stack.ADMIN), next(_chats)
    assert (await ask(fresh(tg, newcomer), "/help"))["text"].startswith("unauthorized:")
    added = (await ask(admin, f"/user add {newcomer}"))["text"]
    assert added.startswith(f"User {newcomer} may now use the bot as user.") and f"• {newcomer}: user" in added, added
    assert (await ask(fresh(tg, newcomer), "/help"))["text"].startswith(HELP)
    assert (await ask(fresh(tg, newcomer), "/user list"))["text"].startswith("unauthorized: /user is for admins")
    removed = (await ask(admin, f"/user remove {newcomer}"))["text"]
    assert removed.startswith(f"User {newcomer} may no longer use the bot.") and f"• {newcomer}:" not in removed
    assert (await ask(fresh(tg, newcomer), "/help"))["text"].startswith("unauthorized:")
    assert newcomer not in {u["user_id"] for u in (await stack.call(Api.USERS, method="GET"))["users"]}
