"""B2: the real bot and the real manager with one real node; bot->manager and node->manager through Toxiproxy."""
from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from harness.ends.telegram import FakeTelegram, TelegramUser
from harness.stack.stack import Stack
from runtime.bot.config import SETTINGS as BOT_SETTINGS
from runtime.protocol import Api

NODE = "b2n1"
# Short limits, so a held link shows up as a timeout within the case: the manager waits APPSERVER for the
# node (under the node's 4 s silence limit), the bot waits REQUEST for the manager.
BOT = {"request_timeout": 3.0, "appserver_timeout": 2.0}
_chats = itertools.count(520_001)  # a chat per case, so no case starts from another's selection


@pytest.fixture(scope="module")
async def tg(stack: Stack) -> AsyncIterator[FakeTelegram]:
    await stack.add_node(NODE)
    yield await stack.start_bot(**BOT)


async def ask(user: TelegramUser, text: str, timeout: float = 15.0) -> str:
    """Type `text`; the text of the message the bot answered with."""
    return str((await user.sent(await user.say(text), timeout))["text"])


async def chat_with_node(tg: FakeTelegram, user_id: int = Stack.ADMIN) -> TelegramUser:
    """A new chat that picked NODE with /node, as a user does."""
    user = tg.user(user_id, next(_chats))
    assert await ask(user, f"/node {NODE}") == f"Node {NODE} selected for this chat."
    return user


async def route(stack: Stack, user: TelegramUser) -> dict[str, Any]:
    return await stack.call(Api.CHAT, {"chat_key": f"tg:{user.chat_id}"})


def node_states(listing: str) -> dict[str, str]:
    """`/node`'s bullet lines as node_id -> online|offline."""
    lines = [ln[2:].removesuffix(" ← selected").split(": ", 1) for ln in listing.splitlines() if ln.startswith("• ")]
    return {node_id: state.split(",")[0] for node_id, state in lines}


def config_file(stack: Stack) -> str:
    return (Path(stack.node_settings[NODE]["codex_home"]) / "config.toml").read_text()


@pytest.mark.case("B2-01")
async def test_status_unauthorised(stack: Stack, tg: FakeTelegram) -> None:
    """/status from a user the bot does not allow is refused, logged, and never asked of the manager"""
    stranger = tg.user(Stack.STRANGER, next(_chats))
    text = await ask(stranger, "/status")
    assert text.startswith("unauthorized: /status is for allowed users and admins") and str(Stack.STRANGER) in text, text
    bot = stack.procs["bot"]
    [refusal] = [ln for ln in bot.log_lines("unauthorized") if f"chat_id={stranger.chat_id} " in ln]
    trace_id = refusal.split("trace_id=", 1)[1].split()[0]
    asked = [ln for ln in bot.log_lines("manager_call") if f"trace_id={trace_id} " in ln]
    assert not [ln for ln in asked if f"path={Api.USERS.value} " not in ln], asked


@pytest.mark.case("B2-02")
async def test_status_no_node_selected(stack: Stack, tg: FakeTelegram) -> None:
    """/status in a chat that picked no node answers a clear prompt to pick one"""
    user = tg.user(Stack.USER, next(_chats))
    assert await ask(user, "/status") == "No node selected for this chat. Pick one with /node."
    assert (await route(stack, user))["node_id"] is None


@pytest.mark.case("B2-03")
async def test_status_selected_node_offline(stack: Stack, tg: FakeTelegram) -> None:
    """/status with the chat's node offline says it is offline and what to do; online again once it is back"""
    user = await chat_with_node(tg)
    async with stack.node_cut_off(NODE):
        text = await ask(user, "/status")
        assert not (await stack.call(Api.STATUS, {"node_id": NODE}))["online"]
        assert text.startswith(f"Node {NODE} is offline (last seen ") and "pick another node with /node" in text, text
    assert (await ask(user, "/status")).startswith(f"Node {NODE}: online")


@pytest.mark.case("B2-04")
async def test_status_manager_down(stack: Stack, tg: FakeTelegram) -> None:
    """/status while the manager process is down: a clear `manager unavailable`; fine again once it is back"""
    user = await chat_with_node(tg)
    try:
        async with stack.faults.window("sigkill", "manager"):
            stack.procs["manager"].kill()
            text = await ask(user, "/status")
    finally:
        await stack.start_manager()
    assert "kind=manager_unavailable" in text and "manager unavailable" in text and "Traceback" not in text, text
    await stack.wait_online(NODE)
    assert (await ask(user, "/status")).startswith(f"Node {NODE}: online")
    assert stack.procs["bot"].starts == 1


@pytest.mark.case("B2-05")
async def test_config_value_write_invalid_json(stack: Stack, tg: FakeTelegram) -> None:
    """/config_value_write with invalid JSON gets a clear error naming the fault, and nothing is written"""
    user = await chat_with_node(tg)
    before = config_file(stack)
    text = await ask(user, "/config_value_write {key_path: model, value: gpt-5.5}")
    assert text.startswith("Invalid JSON: Expecting property name enclosed in double quotes (line 1, column 2)")
    assert '{"key_path": "model", "value": "gpt-5.5"}' in text, text
    assert config_file(stack) == before
    # The error is about the JSON, not the command: the same request typed with a phone's curly quotes is written.
    assert await ask(user, "/config_value_write {“key_path”: “model”, “value”: “gpt-5.5”}") == \
        f"Wrote model on {NODE}: ok."


@pytest.mark.case("B2-06")
async def test_config_value_write_backend_timeout(stack: Stack, tg: FakeTelegram) -> None:
    """/config_value_write while the node does not answer: the manager's timeout reaches the user as `timed out`"""
    assert stack.toxics is not None
    user = await chat_with_node(tg)
    write = '/config_value_write {"key_path": "model", "value": "gpt-5.5"}'
    async with stack.toxics.hold(stack.manager_link(NODE)):  # manager->node: the request waits in the link
        started = time.monotonic()
        text = await ask(user, write)
    assert text.startswith("/config_value_write timed out: kind=timeout, retriable=yes"), text
    assert f"{BOT['appserver_timeout']:g}s" in text, text
    # Bounded, not hanging: the manager's timeout plus slack for a loaded machine, well short of forever.
    assert time.monotonic() - started < BOT["appserver_timeout"] + 2 * BOT["request_timeout"], "the bot hung"
    await stack.wait_heartbeat(NODE, after=time.time())  # the held socket may be dropped and redone first
    assert await ask(user, write) == f"Wrote model on {NODE}: ok."


@pytest.mark.case("B2-07")
async def test_commands_match_backend(stack: Stack, tg: FakeTelegram) -> None:
    """/node, /status, /token list and /config_value_write show exactly what the manager and node hold"""
    user = await chat_with_node(tg)
    servers = await stack.call(Api.SERVERS)
    states = node_states(await ask(user, "/node"))
    assert states == {s["node_id"]: "online" if s["online"] else "offline" for s in servers["servers"]}
    assert sorted(n for n, state in states.items() if state == "online") == servers["online"]
    assert (await route(stack, user))["node_id"] == NODE

    status = (await ask(user, "/status")).splitlines()
    state, chat = await stack.call(Api.STATUS, {"node_id": NODE}), await route(stack, user)
    assert status[0] == f"Node {NODE}: online" and state["online"]
    assert f"open tasks: {state['open_tasks']}" in status and f"model: {chat['model'] or 'node default'}" in status

    tokens = (await stack.call(Api.TOKENS, method="GET"))["tokens"]
    shown = [ln[2:].split(":", 1)[0] for ln in (await ask(user, "/token list")).splitlines() if ln.startswith("• ")]
    assert shown == [t["token_id"] for t in tokens]

    async def verbosity() -> Any:
        read = await stack.call(Api.APPSERVER, {"node_id": NODE, "method": "config/read", "params": {}})
        return read["result"]["config"]["model_verbosity"]
    before = await verbosity()
    value = "low" if before != "low" else "high"
    try:
        write = json.dumps({"key_path": "model_verbosity", "value": value})
        assert await ask(user, f"/config_value_write {write}") == f"Wrote model_verbosity on {NODE}: ok."
        assert await verbosity() == value
    finally:
        await stack.call(Api.CONFIG_VALUE_WRITE, {"node_id": NODE, "key_path": "model_verbosity", "value": before})
    assert await verbosity() == before


@pytest.mark.case("B2-08")
async def test_no_node_online(stack: Stack, tg: FakeTelegram) -> None:
    """with no node online, /node says so and a message for Codex gets a clear node_offline reply"""
    user = await chat_with_node(tg)
    async with stack.node_cut_off(NODE):
        assert (await stack.call(Api.SERVERS))["online"] == []
        listing = await ask(user, "/node")
        assert "No node is online right now" in listing and node_states(listing)[NODE] == "offline", listing
        await user.say("hello while nothing is online")
        failed = await user.until_shown(lambda m: "⏳" not in m["text"] and "Codex turn" in m["text"], timeout=15)
        assert "kind=node_offline" in failed["text"] and "pick another node with /node" in failed["text"], failed
    assert node_states(await ask(user, "/node"))[NODE] == "online"


@pytest.mark.case("B2-09")
async def test_rpc_timeout(stack: Stack, tg: FakeTelegram) -> None:
    """bot->manager held by a timeout toxic both ways: a clear `timed out` within the bot's limit, no hang"""
    assert stack.toxics is not None
    user = await chat_with_node(tg)
    link = stack.bot_manager_link
    async with stack.toxics.hold(link, stream="upstream"), stack.toxics.hold(link, stream="downstream"):
        started = time.monotonic()
        text = await ask(user, "/status", timeout=4 * BOT["request_timeout"])
        waited = time.monotonic() - started
    assert text.startswith("/status timed out: kind=timeout, retriable=yes") and "did not answer" in text, text
    assert BOT["request_timeout"] <= waited < 4 * BOT["request_timeout"], waited  # its own limit, then no hang
    assert stack.procs["bot"].alive
    assert (await ask(user, "/status")).startswith(f"Node {NODE}: online")


async def restart_bot(stack: Stack, tg: FakeTelegram, control_token: str) -> None:
    """The stack's one bot process, restarted with another control token."""
    bot = stack.procs["bot"]
    bot.terminate()
    bot.env[BOT_SETTINGS.env("control_token")] = control_token
    since = await tg.last_seq()
    bot.start()
    await tg.wait_call("getMe", None, since, 20)


@pytest.mark.case("B2-10")
async def test_wrong_control_credential(stack: Stack, tg: FakeTelegram) -> None:
    """a bot with the wrong control token: users get a clear credentials error; the bot and the manager log it"""
    user = await chat_with_node(tg)
    refused_before = await stack.metric("control_unauthorized")
    bot = stack.procs["bot"]
    errors_before = len([ln for ln in bot.log_lines("manager_call") if "status=401 " in ln])
    try:
        await restart_bot(stack, tg, "ctl_wrong")
        text = await ask(user, "/status")
    finally:
        await restart_bot(stack, tg, stack.control_token)
    assert text.startswith("/status failed: kind=unauthorized, retriable=no") and "--control-token" in text, text
    logged = [ln for ln in bot.log_lines("manager_call") if "status=401 " in ln][errors_before:]
    assert logged and all("level=error " in ln and "error_kind=unauthorized " in ln for ln in logged), logged
    assert await stack.metric("control_unauthorized") > refused_before
    assert (await ask(user, "/status")).startswith(f"Node {NODE}: online")
