"""A3 under attack: the real manager, one real node and the real bot (webhook mode, so Telegram's webhook secret is
one of the secrets), every secret read from a `*_FILE`; the manager slows bad tokens (auth_failures 5 per 60 s) and
the bot limits each user to its default rate. Intruders speak from other loopback addresses (127.0.0.N)."""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import secrets as random
from collections.abc import AsyncIterator, Callable

import aiohttp
import psutil
import pytest

from harness.checkers import secrets
from harness.ends.intruder import Intruder
from harness.ends.telegram import FakeTelegram, TelegramUser
from harness.stack.procs import Proc
from harness.stack.stack import Stack
from runtime.bot.config import BotConfig
from runtime.protocol import Api, Msg, new_id

NODE = "a3s1"
AUTH_FAILURES = 5
STACK_MANAGER_ARGS = {"auth-failures": AUTH_FAILURES, "auth-window": 60}
STACK_SECRET_FILES = True
SERVICES = ("manager", NODE, "bot")
_ids = itertools.count(400_001)  # users and chats of their own per run: the rate limit counts per user


@pytest.fixture(scope="module")
async def tg(stack: Stack) -> AsyncIterator[FakeTelegram]:
    await stack.add_node(NODE)
    yield await stack.start_bot(webhook=True, user_rate_limit=BotConfig.user_rate_limit,
                                user_rate_window=BotConfig.user_rate_window)


@pytest.fixture
async def intruders(stack: Stack) -> AsyncIterator[Callable[[], Intruder]]:
    """Makes intruders, each on a loopback address of its own; closed after the case."""
    made: list[Intruder] = []

    def make() -> Intruder:
        made.append(Intruder(stack.manager_url))
        return made[-1]
    yield make
    for intruder in made:
        await intruder.close()


async def member(stack: Stack, tg: FakeTelegram, role: str = "user") -> TelegramUser:
    """A user the manager allows (added like `/user add`), in a private chat of its own."""
    user_id = next(_ids)
    await stack.call(Api.USERS, {"user_id": user_id, "role": role})
    return tg.user(user_id, user_id)


async def answered(user: TelegramUser, text: str) -> str:
    return str((await user.sent(await user.say(text)))["text"])


async def turn(user: TelegramUser, prompt: str) -> None:
    """A Codex turn through the bot, waited for until its final answer."""
    await user.say(prompt)
    await user.until_shown(lambda m: f"mock reply: {prompt}" in m["text"] and "⏳" not in m["text"], 30)


def service_processes(stack: Stack) -> list[psutil.Process]:
    return [psutil.Process(stack.procs[name].pid) for name in SERVICES]


@pytest.mark.case("S-04")
async def test_no_secret_leaks(stack: Stack, tg: FakeTelegram, intruders: Callable[[], Intruder]) -> None:
    """every class of secret read from a file; after traffic and bad tokens everywhere, none is in the DB files
    (the node token is there hashed), a log, /metrics, a command line, a service's environment or an error reply"""
    fleet = (await stack.call(Api.TOKENS, {"note": "s04 fleet"}))["token"]
    spare = await stack.call(Api.TOKENS, {"node_id": new_id("s04"), "note": "s04 revoked"})
    await stack.call(Api.TOKENS_REVOKE, {"token_id": spare["token_id"]})
    wrong_bot_token = f"{random.randbelow(9 * 10**8) + 10**8}:{random.token_urlsafe(24)}"
    mine = {"control token": stack.control_token, "bot token": stack.bot_token, "webhook secret": stack.webhook_secret,
            "node token": stack.node_settings[NODE]["token"], "fleet token": fleet, "revoked token": spare["token"],
            "refused bot token": wrong_bot_token}

    # Each service read its secrets from files: the environment names files only, and holds no secret.
    for proc in service_processes(stack):
        env = proc.environ()
        assert any(k.startswith("CODEX_RELAY_") and k.endswith("_FILE") for k in env), (proc.name(), sorted(env))
    in_env = secrets.in_processes(service_processes(stack), mine, environment=True)
    assert not in_env, f"a secret in a service's environment or command line: {in_env}"

    # Traffic on every path a secret travels: Telegram (webhook in, Bot API out), the control API, a Codex turn.
    admin, user = await member(stack, tg, "admin"), await member(stack, tg)
    assert (await answered(user, f"/node {NODE}")).endswith("selected for this chat.")
    await turn(user, f"s04 {new_id('p')}")
    assert spare["token_id"] in await answered(admin, "/token list")
    assert (await answered(user, "/status")).startswith(f"Node {NODE}: online")

    # Bad tokens, each a real secret in the wrong place, and the errors they draw (each intruder stays under
    # auth_failures, so each error is the one for its token, not the throttle's).
    errors: list[str] = []
    for token in (stack.node_settings[NODE]["token"], fleet, stack.control_token + "x", stack.webhook_secret):
        status, envelope = await intruders().control(Api.USERS, token)
        assert (status, envelope["error_kind"]) == (401, "unauthorized"), envelope
        errors.append(json.dumps(envelope))
    for token in (spare["token"], stack.control_token):  # revoked, and not a node token at all
        reply = await intruders().register(new_id("s04"), token)
        assert reply["type"] == Msg.REGISTER_ERROR and reply["error_kind"] == "unauthorized", reply
        errors.append(json.dumps(reply))
    for forged in ({"X-Telegram-Bot-Api-Secret-Token": stack.node_settings[NODE]["token"]}, {}):
        status, body = await intruders().post(stack.webhook_url, {"update_id": 1}, forged)
        assert status == 403, (status, body)
        errors.append(body)
    refused_bot = await refused_bot_token(stack, wrong_bot_token)
    assert refused_bot.returncode == 3 and "<telegram_token>" in refused_bot.log_text(), refused_bot.log_text()
    errors.append(refused_bot.log_text())

    async with aiohttp.ClientSession() as http, http.get(stack.manager_url + Api.METRICS) as resp:
        metrics = await resp.text()
    assert "relay_events_total" in metrics
    # Every Bot API call (each reply, edit and alert the bot sent, the updates it got) but setWebhook: that is where
    # the webhook secret goes, to Telegram, by design.
    calls = await tg.calls()
    assert [c["params"].get("secret_token") for c in calls if c["method"] == "setWebhook"] == [stack.webhook_secret]
    shown = json.dumps([c for c in calls if c["method"] != "setWebhook"])
    assert str(user.chat_id) in shown and "mock reply: s04" in shown

    leaks = {where: [label for label, s in mine.items() if s in text]
             for where, text in [("/metrics", metrics), ("Telegram", shown),
                                 *((f"error {i}", e) for i, e in enumerate(errors))]}
    assert not any(leaks.values()), f"secrets shown: {leaks}"
    in_files = secrets.in_files(stack.root, mine)  # the DBs (and their WAL), every log, the bot's state, codex's home
    assert not in_files, f"secrets in files: {in_files}"
    hashed = secrets.in_files(stack.root, {"node token hash": hashlib.sha256(mine["node token"].encode()).hexdigest()})
    assert any(hit.startswith(stack.db_path.name) for hit in hashed), f"the node token is not stored hashed: {hashed}"
    procs = [psutil.Process(p.pid) for p in stack.procs.values() if p.alive]
    procs += [c for p in stack.procs.values() if p.alive for c in p.children()]
    in_argv = secrets.in_processes(procs, mine)
    assert not in_argv, f"a secret on a command line (or process title): {in_argv}"


async def refused_bot_token(stack: Stack, token: str) -> Proc:
    """A second bot whose token file holds one Telegram refuses: it exits 3, naming the setting, not the token."""
    assert stack.telegram is not None
    proc = stack.spawn("bot-refused", "bot", telegram_token=token, control_token=stack.control_token,
                       telegram_base_url=f"http://127.0.0.1:{stack.telegram.port}/bot", manager_url=stack.manager_url,
                       state_dir=str(stack.root / "bot-refused"))
    await stack.expect_exit(proc)
    return proc


@pytest.mark.case("S-05")
async def test_abuse_is_slowed(stack: Stack, tg: FakeTelegram, intruders: Callable[[], Intruder]) -> None:
    """a user past the bot's rate gets one polite reply naming the wait, while another user's prompt is answered;
    an address past auth_failures bad tokens is refused (429) on the control API and the node socket, while the
    stack's own clients go on"""
    limit, window = BotConfig.user_rate_limit, BotConfig.user_rate_window
    flooder, other = await member(stack, tg), await member(stack, tg)
    assert (await answered(other, f"/node {NODE}")).endswith("selected for this chat.")
    bot = stack.procs["bot"]
    before = len(bot.log_lines("rate_limited"))
    extra = 10
    for _ in range(limit + extra):
        await flooder.say("/help")  # as fast as the fake takes them
    await turn(other, f"s05 {new_id('p')}")  # served while the flood is under way
    for _ in range(100):  # every flooded update handled: the ones past the limit each leave a rate_limited line
        if len(bot.log_lines("rate_limited")) - before >= extra:
            break
        await asyncio.sleep(0.1)
    from_bot = [m["text"] for m in await flooder.messages() if m["from_bot"]]
    helps = [t for t in from_bot if t.startswith("Codex Relay:")]
    notices = [t for t in from_bot if not t.startswith("Codex Relay:")]
    assert len(helps) == limit, f"{len(helps)} of {limit + extra} served, limit {limit}"
    assert len(notices) == 1, notices
    wait = int(notices[0].split("try again in ", 1)[1].split(" s")[0])
    assert notices[0].startswith("You are sending more than I can take") and 0 < wait <= window, notices
    assert len(bot.log_lines("rate_limited")) - before == extra

    # The manager's half: bad tokens from one address, then that address waits, the right token included.
    intruder = intruders()
    for _ in range(AUTH_FAILURES):
        status, envelope = await intruder.control(Api.USERS, "crt_" + random.token_hex(8))
        assert (status, envelope["error_kind"]) == (401, "unauthorized"), envelope
    status, envelope = await intruder.control(Api.USERS, stack.control_token)
    assert (status, envelope["error_kind"], envelope["retriable"]) == (429, "rate_limited", True), envelope
    assert f"too many bad tokens from {intruder.address}: retry in" in envelope["error"], envelope
    refused = await intruder.register(new_id("s05"), stack.node_settings[NODE]["token"])
    assert refused["type"] == Msg.REGISTER_ERROR and refused["error_kind"] == "rate_limited", refused
    assert (await stack.call(Api.USERS, method="GET"))["users"]  # 127.0.0.1 is not slowed
    assert (await answered(other, "/status")).startswith(f"Node {NODE}: online")
    assert await stack.metric("auth_throttled") >= 2
