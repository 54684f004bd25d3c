"""Bot settings: CLI flags over CODEX_RELAY_BOT_* environment variables over defaults.

A bad or missing setting ends the process with one structured line and EXIT_CONFIG, never a traceback.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields

ENV_PREFIX = "CODEX_RELAY_BOT_"
EXIT_CONFIG = 2        # missing or malformed setting
EXIT_TELEGRAM = 3      # Telegram refused the bot token


@dataclass(frozen=True)
class BotConfig:
    telegram_token: str = ""
    # PTB appends the token: `<base_url><token>/<method>`; the fake Bot API lives at http://127.0.0.1:PORT/bot
    telegram_base_url: str = "https://api.telegram.org/bot"
    manager_url: str = "http://127.0.0.1:8780"
    control_token: str = ""
    allowed_users: frozenset[int] = frozenset()
    admin_users: frozenset[int] = frozenset()
    request_timeout: float = 15.0      # one control call to the manager
    appserver_timeout: float = 20.0    # what the manager may wait for the node's app-server
    turn_timeout: float = 300.0        # one Codex turn from plain text
    telegram_timeout: float = 20.0     # one Bot API call; generous, because a timed-out send is never repeated
    poll_timeout: float = 20.0         # getUpdates long-poll
    progress_interval: float = 3.0     # at most one progress edit per message per interval
    users_ttl: float = 10.0            # how long the manager's allowlist is trusted before it is fetched again
    send_attempts: int = 5
    webhook_url: str = ""              # empty: long polling
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = 8443
    webhook_secret: str = ""
    log_level: str = "info"


class ConfigError(Exception):
    def __init__(self, error: str, fix: str) -> None:
        super().__init__(error)
        self.error, self.fix = error, fix


def _user_ids(name: str, raw: str) -> frozenset[int]:
    try:
        return frozenset(int(part) for part in raw.replace(" ", "").split(",") if part)
    except ValueError:
        raise ConfigError(f"`{name}` must be comma-separated Telegram user ids, got {raw!r}",
                          f"set --{name.replace('_', '-')} or {ENV_PREFIX}{name.upper()} to e.g. 123,456") from None


def _coerce(name: str, raw: str) -> object:
    default = getattr(BotConfig(), name)
    if isinstance(default, frozenset):
        return _user_ids(name, raw)
    try:
        return type(default)(raw)
    except ValueError:
        raise ConfigError(f"`{name}` must be a {type(default).__name__}, got {raw!r}",
                          f"fix --{name.replace('_', '-')} or {ENV_PREFIX}{name.upper()}") from None


def parse(argv: list[str] | None = None) -> BotConfig:
    names = [f.name for f in fields(BotConfig)]
    p = argparse.ArgumentParser(prog="codex-relay-bot", description="Codex Relay Telegram bot. Every flag can also "
                                f"be set as {ENV_PREFIX}<FLAG_NAME_IN_CAPS>, e.g. {ENV_PREFIX}TELEGRAM_TOKEN.")
    for name in names:
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                       help=f"default: {getattr(BotConfig(), name)!r}" if "token" not in name else None)
    args = p.parse_args(argv)
    values: dict[str, object] = {}
    for name in names:
        raw = getattr(args, name)
        if raw is None:
            raw = os.environ.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(name, raw)
    config = BotConfig(**values)  # type: ignore[arg-type]
    for name in ("telegram_token", "control_token"):
        if not getattr(config, name):
            raise ConfigError(f"missing required setting `{name}`",
                              f"pass --{name.replace('_', '-')} or set {ENV_PREFIX}{name.upper()}")
    if config.progress_interval <= 0 or config.send_attempts < 1:
        raise ConfigError("progress_interval must be > 0 and send_attempts >= 1", "fix the flag or env variable")
    return config
