"""Bot settings, declared once; runtime/settings.py reads them from flags, CODEX_RELAY_BOT_* and --config."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated

from runtime import tls
from runtime.protocol.wire import FILE_CHUNK_BYTES, TELEGRAM_DOWNLOAD_BYTES
from runtime.settings import LOG_LEVELS, Loader, setting, state_dir

EXIT_TELEGRAM = 3      # Telegram refused the bot token; runtime.settings.EXIT_CONFIG (2) is every bad setting


@dataclass(frozen=True)
class BotConfig:
    telegram_token: Annotated[str, setting("bot token from @BotFather", secret=True, required=True)] = field(
        default="", repr=False)
    # PTB appends the token: `<base_url><token>/<method>`; the fake Bot API lives at http://127.0.0.1:PORT/bot
    telegram_base_url: Annotated[str, setting("Bot API base URL; the token is appended")] = \
        "https://api.telegram.org/bot"
    manager_url: Annotated[str, setting("the manager's control API URL; https:// for TLS")] = "http://127.0.0.1:8780"
    manager_tls_ca: Annotated[str, setting("PEM CA file the manager's certificate must chain to (https:// only)")] = ""
    manager_tls_fingerprint: Annotated[str, setting("SHA-256 of the manager's certificate, pinned instead of a CA "
                                                    "(https:// only)")] = ""
    control_token: Annotated[str, setting("the manager's control token", secret=True, required=True)] = field(
        default="", repr=False)
    allowed_users: Annotated[frozenset[int], setting("Telegram user ids allowed to use the bot")] = frozenset()
    admin_users: Annotated[frozenset[int], setting("Telegram user ids allowed to administer it")] = frozenset()
    request_timeout: Annotated[float, setting("seconds for one control call to the manager", gt=0)] = 15.0
    appserver_timeout: Annotated[float, setting("seconds the manager may wait for the node's app-server",
                                                gt=0)] = 20.0
    turn_timeout: Annotated[float, setting("seconds for one Codex turn from plain text", gt=0)] = 300.0
    # Generous, because a timed-out send is never repeated.
    telegram_timeout: Annotated[float, setting("seconds for one Bot API call", gt=0)] = 20.0
    poll_timeout: Annotated[float, setting("seconds of one getUpdates long poll", ge=0)] = 20.0
    progress_interval: Annotated[float, setting("seconds between progress edits of one message; Telegram allows about "
                                                "one edit per second per chat", ge=1.0)] = 3.0
    user_rate_limit: Annotated[int, setting("messages and button presses one Telegram user may send per "
                                            "user_rate_window; past it they are told once when to try again, "
                                            "and skipped until then; 0 turns the limit off", ge=0)] = 20
    user_rate_window: Annotated[float, setting("seconds of the window user_rate_limit counts in", gt=0)] = 60.0
    users_ttl: Annotated[float, setting("seconds the manager's allowlist is trusted before it is fetched again",
                                        ge=0)] = 10.0
    answer_max_parts: Annotated[int, setting("messages one answer may take; a longer one comes as its first message "
                                             "and the whole answer as an .md document", ge=1)] = 8
    file_max_bytes: Annotated[int, setting(f"largest file the bot takes from Telegram or from a node (in chunks of "
                                           f"{FILE_CHUNK_BYTES} bytes); at most {TELEGRAM_DOWNLOAD_BYTES}, what "
                                           f"Telegram lets a bot download; the node's own file_max_bytes applies "
                                           f"too", ge=1, le=TELEGRAM_DOWNLOAD_BYTES)] = TELEGRAM_DOWNLOAD_BYTES
    send_attempts: Annotated[int, setting("tries for one Telegram send", ge=1)] = 5
    webhook_url: Annotated[str, setting("public webhook URL; empty uses long polling")] = ""
    webhook_listen: Annotated[str, setting("address the webhook server listens on")] = "127.0.0.1"
    webhook_port: Annotated[int, setting("port the webhook server listens on; 0 takes a free one, logged in "
                                              "bot_ready", ge=0, le=65535)] = 8443
    webhook_secret: Annotated[str, setting("secret Telegram sends with each webhook call", secret=True)] = field(
        default="", repr=False)
    state_dir: Annotated[str, setting("where the bot keeps its place in the manager's events, so a restart "
                                      "catches up; empty is $XDG_STATE_HOME (or ~/.local/state)/codex-relay/bot")] = ""
    log_level: Annotated[str, setting("log level", choices=LOG_LEVELS)] = "info"


SETTINGS = Loader(BotConfig, "bot", "Codex Relay Telegram bot: the chat front end of the manager. "
                  "`codex-relay-bot doctor [settings]` checks its setup instead, one line per check.")


def load(argv: Sequence[str] | None = None) -> BotConfig:
    config = SETTINGS.load(argv)
    tls.client_ssl(config.manager_url, config.manager_tls_ca, config.manager_tls_fingerprint)
    return replace(config, state_dir=state_dir(config.state_dir, "bot"))
