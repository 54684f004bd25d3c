"""`codex-relay-bot doctor --config bot.toml`: can this bot work? One line per check.

It reads the settings the bot would read, then checks its state folder, the bot token (Telegram's getMe), the
manager (over TLS with the bot's trust settings, when https://), the control token, and who may use the bot.
"""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence

import aiohttp
from telegram import Bot
from telegram.error import InvalidToken, TelegramError

from runtime import doctor, tls
from runtime.bot import config as config_mod
from runtime.bot.config import SETTINGS, BotConfig
from runtime.bot.manager_client import ManagerClient
from runtime.bot.render import ready_state
from runtime.doctor import Check, fail, ok, skip
from runtime.protocol import Api, ErrorKind, ReadyState, RelayError
from runtime.settings import ConfigError


def state_check(config: BotConfig) -> Check:
    """The folder where the bot keeps its place in the manager's events exists, or can be made, and is writable."""
    folder = config.state_dir
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)  # the nearest existing parent is where it would be created
    if os.path.isdir(folder) and os.access(folder, os.W_OK):
        return ok("state_dir", config.state_dir)
    return fail("state_dir", f"{config.state_dir} cannot be written ({folder} is not a writable folder)",
                f"set {SETTINGS.where('state_dir')} to a folder the bot's user may write")


async def telegram_check(config: BotConfig) -> Check:
    base = config.telegram_base_url
    bot = Bot(config.telegram_token, base_url=base,
              base_file_url=base.removesuffix("bot") + "file/bot" if base.endswith("bot") else base)
    try:
        me = await bot.get_me()
    except InvalidToken:
        return fail("telegram", "Telegram refused the bot token", f"set {SETTINGS.where('telegram_token')} to the "
                    "token from @BotFather")
    except TelegramError as exc:
        # PTB's messages may quote the request URL, which holds the token.
        reason = str(exc).replace(config.telegram_token, "<telegram_token>")
        return fail("telegram", f"cannot reach the Bot API at {base}: {reason}", "check this machine's network and "
                    f"proxy (HTTPS_PROXY), or {SETTINGS.where('telegram_base_url')}")
    finally:
        await bot.shutdown()
    return ok("telegram", f"the token is accepted: @{me.username}")


async def manager_checks(config: BotConfig) -> AsyncIterator[Check]:
    secure = tls.client_ssl(config.manager_url, config.manager_tls_ca, config.manager_tls_fingerprint)
    trust = ("the pinned certificate" if config.manager_tls_fingerprint else config.manager_tls_ca
             or "the system's CAs")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=secure),
                                     timeout=aiohttp.ClientTimeout(total=config.request_timeout)) as http:
        lines, reached = await doctor.reach_manager(
            http, config.manager_url.rstrip("/"), trust, f"start the manager, or point "
            f"{SETTINGS.where('manager_url')} at it", f"set {SETTINGS.where('manager_tls_ca')} or "
            "`manager_tls_fingerprint` to what the manager serves")
    for line in lines:
        yield line
    if not reached:
        yield skip("control token", "needs the manager reachable")
        yield skip("users", "needs the manager reachable")
        return
    manager = ManagerClient(config.manager_url, config.control_token, config.request_timeout, secure)
    try:
        servers = (await manager.get(Api.SERVERS, "doctor")).get("servers") or []
        users = (await manager.get(Api.USERS, "doctor")).get("users") or []
    except RelayError as err:
        fix = (f"set {SETTINGS.where('control_token')} to the manager's control_token"
               if err.kind == ErrorKind.UNAUTHORIZED else "see the manager's log")
        yield fail("control token", err.error, fix)
        yield skip("users", "needs the control token accepted")
        return
    finally:
        await manager.close()
    online = [s for s in servers if s.get("online")]
    not_ready = [s["node_id"] for s in online if ready_state(s.get("readiness")) not in (ReadyState.READY,
                                                                                           ReadyState.UNKNOWN)]
    yield ok("control token", f"accepted; {len(servers)} nodes known, {len(online)} online"
             + (f", not ready: {', '.join(not_ready)} (`codex-relay-node doctor` there says why)" if not_ready else ""))
    if config.allowed_users or config.admin_users or users:
        yield ok("users", f"{len(config.allowed_users | config.admin_users)} in the settings, {len(users)} added "
                 "through the manager")
    else:
        yield fail("users", "nobody may use the bot: no allowed_users, no admin_users, none added through the manager",
                   f"set {SETTINGS.where('admin_users')} to your Telegram user id")


async def checks(argv: Sequence[str]) -> AsyncIterator[Check]:
    try:
        config = config_mod.load(argv)
    except ConfigError as err:
        yield fail("config", err.error, err.fix)
        for name in ("state_dir", "telegram", "manager", "control token", "users"):
            yield skip(name, "needs a valid config")
        return
    yield ok("config", f"manager_url={config.manager_url}, {'webhook' if config.webhook_url else 'long polling'}")
    yield state_check(config)
    yield await telegram_check(config)
    async for check in manager_checks(config):
        yield check


def main(argv: Sequence[str]) -> None:
    doctor.main(checks, argv)
