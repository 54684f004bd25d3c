"""Bot entry point (`codex-relay-bot`, `python -m runtime.bot.main`): wires PTB, the manager client and the event stream.

PTB runs inside our own loop (initialize, start polling, start) so the event stream and the manager
session share it, and shutdown happens in reverse order on SIGTERM/SIGINT.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from telegram import BotCommand
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import Application, ApplicationBuilder

from runtime import __version__, tls
from runtime.bot import config as config_mod
from runtime.bot import doctor, handlers
from runtime.bot.access import Access
from runtime.bot.approvals import Approvals
from runtime.bot.commands import COMMANDS
from runtime.bot.config import EXIT_TELEGRAM, BotConfig
from runtime.bot.context import Relay
from runtime.bot.cursor import Cursor
from runtime.bot.delivery import Delivery
from runtime.bot.events import EventStream
from runtime.bot.flood import Flood
from runtime.bot.journal import Journal
from runtime.bot.manager_client import ManagerClient
from runtime.bot.turns import Turns
from runtime.bot.updates import SUBSCRIBED, Screen, UpdatesRequest
from runtime.bot.webhook import Webhook
from runtime.bot.wizard import Wizards
from runtime.aiotasks import cancel
from runtime.backoff import Backoff
from runtime.logfmt import log
from runtime.protocol import Event
from runtime.settings import EXIT_CONFIG, load_or_exit

logger = logging.getLogger("codex_bot")



def build(config: BotConfig, screen: Screen) -> tuple[Application, Relay, EventStream]:  # type: ignore[type-arg]
    base = config.telegram_base_url
    app = (ApplicationBuilder().token(config.telegram_token).base_url(base)
           .base_file_url(base.removesuffix("bot") + "file/bot" if base.endswith("bot") else base)
           .concurrent_updates(64)  # a turn or a slow manager call must not hold up other chats or approval buttons
           .read_timeout(config.telegram_timeout).write_timeout(config.telegram_timeout)
           .connect_timeout(5.0).pool_timeout(5.0)
           .get_updates_request(UpdatesRequest(screen, connection_pool_size=1))  # one bad update is skipped
           .build())
    manager = ManagerClient(config.manager_url, config.control_token, config.request_timeout,
                            tls.client_ssl(config.manager_url, config.manager_tls_ca, config.manager_tls_fingerprint))
    delivery = Delivery(app.bot, config.send_attempts)
    access = Access(config, manager)
    relay = Relay(config, manager, access, delivery, Approvals(manager, delivery, access),
                  Turns(config, manager, delivery, Journal(config.state_dir)),
                  Flood(config.user_rate_limit, config.user_rate_window), Wizards())
    handlers.install(app, relay)

    async def resolved(e: dict) -> None:  # type: ignore[type-arg]
        await relay.approvals.on_resolved(str(e.get("approval_id")), str(e.get("state")), e.get("decided_by"),
                                          e.get("reason"))

    async def requested(e: dict) -> None:  # type: ignore[type-arg]
        await relay.approvals.on_requested(e.get("approval") or {}, str(e.get("trace_id") or ""))

    events = EventStream(manager, {Event.APPROVAL_REQUESTED: requested, Event.APPROVAL_RESOLVED: resolved,
                                   Event.TASK_PROGRESS: relay.turns.on_progress, Event.TASK_RESULT: relay.turns.on_result},
                         on_connect=relay.approvals.resync, cursor=Cursor(config.state_dir))
    return app, relay, events


async def _initialize(app: Application) -> None:  # type: ignore[type-arg]
    """getMe until Telegram answers: a bot started before its network is up waits instead of dying."""
    backoff = Backoff(1.0, 2.0, 30.0)
    while True:
        try:
            await app.initialize()
            return
        except InvalidToken:
            raise
        except NetworkError as exc:
            log(logger, logging.WARNING, "telegram_unreachable", error=f"{type(exc).__name__}: {exc.message}")
            await backoff.sleep()


async def run(config: BotConfig) -> int:
    screen = Screen()  # one running total of skipped updates, whichever way they arrive
    app, relay, events = build(config, screen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await _initialize(app)
    except InvalidToken as exc:
        # PTB's message quotes the token itself.
        reason = exc.message.replace(config.telegram_token, "<telegram_token>")
        log(logger, logging.ERROR, "startup_failed", error=f"Telegram refused the bot token: {reason}",
            fix=f"set {config_mod.SETTINGS.where('telegram_token')} to the token from @BotFather",
            exit_code=EXIT_TELEGRAM)
        await relay.manager.close()
        return EXIT_TELEGRAM
    with contextlib.suppress(TelegramError):
        await app.bot.set_my_commands([BotCommand(name, name.replace("_", " ")) for name in COMMANDS])

    def polling_error(exc: TelegramError) -> None:
        log(logger, logging.WARNING, "telegram_poll_failed", error=f"{type(exc).__name__}: {exc.message}")

    webhook = Webhook(app, screen, config.webhook_secret) if config.webhook_url else None
    listening: int | None = None
    if webhook is not None:
        try:
            listening = await webhook.start(config.webhook_listen, config.webhook_port, config.webhook_url)
        except (OSError, TelegramError) as exc:  # the port is taken, or Telegram refused the URL
            log(logger, logging.ERROR, "startup_failed", error=f"webhook: {type(exc).__name__}: {exc}",
                exit_code=EXIT_CONFIG, fix=f"set {config_mod.SETTINGS.where('webhook_port')} to a free port and "
                                           f"{config_mod.SETTINGS.where('webhook_url')} to a public https URL")
            await webhook.stop()
            await app.shutdown()
            await relay.manager.close()
            return EXIT_CONFIG
    else:
        await app.updater.start_polling(timeout=int(config.poll_timeout), allowed_updates=list(SUBSCRIBED),  # type: ignore[union-attr]
                                        error_callback=polling_error)
    await app.start()
    resumed = relay.turns.resume()  # before the event stream: a replayed result finds its turn, not an orphan
    stream = events.tasks.spawn(events.run_forever(), "events")
    log(logger, logging.INFO, "bot_ready", username=app.bot.username, version=__version__,
        manager_url=config.manager_url,
        mode="webhook" if config.webhook_url else "polling", webhook_port=listening, allowed=len(config.allowed_users),
        admins=len(config.admin_users), user_rate=f"{config.user_rate_limit}/{config.user_rate_window:g}s",
        turns_resumed=resumed)
    await stop.wait()
    log(logger, logging.INFO, "bot_stopping")
    await cancel(stream)
    await events.close()
    await relay.turns.close()
    if webhook is not None:
        await webhook.stop()
    else:
        await app.updater.stop()  # type: ignore[union-attr]
    await app.stop()
    await app.shutdown()
    await relay.manager.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    # Opt in to PTB's timedelta durations now, instead of a deprecation warning on every RetryAfter.
    os.environ.setdefault("PTB_TIMEDELTA", "true")
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["doctor"]:
        doctor.main(args[1:])
        return
    config = load_or_exit(config_mod.load, args, logger)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per Bot API call otherwise
    sys.exit(asyncio.run(run(config)))


if __name__ == "__main__":
    main()
