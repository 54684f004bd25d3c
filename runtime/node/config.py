"""Node settings: a TOML file, overridden by CODEX_NODE_* variables, overridden by CLI flags.

Startup checks fail with one structured line and a documented exit code, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, fields, replace
from typing import Any

from runtime import eventloop

# Documented exit codes (README, "Running a node").
EXIT_CONFIG = 2      # unreadable file, unknown key, bad value, missing required setting
EXIT_CWD = 3         # cwd does not exist or is not a directory
EXIT_CODEX = 4       # the codex binary is missing or does not run


@dataclass(frozen=True)
class NodeConfig:
    node_id: str = ""
    token: str = ""
    manager_url: str = "ws://127.0.0.1:8780/ws/node"
    cwd: str = "."
    codex_bin: str = "codex"
    codex_home: str = ""           # empty: inherit CODEX_HOME from the environment
    approval_policy: str = "on-request"
    sandbox: str = "read-only"
    max_pending: int = 10
    task_timeout: float = 300.0
    approval_timeout: float = 120.0
    rpc_timeout: float = 30.0
    heartbeat_interval: float = 5.0
    # If the manager stops answering heartbeats for this long, the link is presumed dead.
    manager_silence: float = 15.0
    backoff_initial: float = 0.5
    backoff_factor: float = 1.7
    backoff_max: float = 10.0
    backoff_jitter: float = 0.1
    progress_interval: float = 0.5
    log_level: str = "info"
    event_loop: str = eventloop.DEFAULT


class ConfigError(Exception):
    def __init__(self, exit_code: int, error: str, fix: str) -> None:
        super().__init__(error)
        self.exit_code, self.error, self.fix = exit_code, error, fix


def _where(name: str) -> str:
    return f"`{name}` in the config file, CODEX_NODE_{name.upper()} or --{name.replace('_', '-')}"


def _coerce(name: str, raw: Any) -> Any:
    default = getattr(NodeConfig(), name)
    try:
        return type(default)(raw)
    except (TypeError, ValueError):
        raise ConfigError(EXIT_CONFIG, f"setting `{name}` must be a {type(default).__name__}, got {raw!r}",
                          f"fix {_where(name)}") from None


def load(argv: list[str] | None = None) -> NodeConfig:
    names = [f.name for f in fields(NodeConfig)]
    p = argparse.ArgumentParser(prog="codex-relay-node", description="Codex Relay node")
    p.add_argument("--config", help="TOML file with node settings")
    for name in names:
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None)
    args = p.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, "rb") as fh:
                values.update(tomllib.load(fh))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(EXIT_CONFIG, f"cannot read config {args.config}: {exc}",
                              "pass a readable TOML file to --config") from None
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(EXIT_CONFIG, f"unknown setting(s) in {args.config}: {', '.join(unknown)}",
                              f"remove them; known settings are: {', '.join(names)}")
    for name in names:
        if (env := os.environ.get(f"CODEX_NODE_{name.upper()}")) is not None:
            values[name] = env
        if (flag := getattr(args, name)) is not None:
            values[name] = flag
    config = NodeConfig(**{k: _coerce(k, v) for k, v in values.items()})
    for name in ("node_id", "token"):
        if not getattr(config, name):
            raise ConfigError(EXIT_CONFIG, f"missing required setting `{name}`",
                              f"set {_where(name)}")
    # The codex child runs in `cwd`: a relative binary path must not be resolved from there.
    codex_bin = config.codex_bin if os.sep not in config.codex_bin else os.path.abspath(config.codex_bin)
    config = replace(config, codex_bin=shutil.which(codex_bin) or codex_bin)
    if config.event_loop not in eventloop.LOOPS:
        raise ConfigError(EXIT_CONFIG, f"unknown event_loop {config.event_loop!r}",
                          f"set {_where('event_loop')} to one of: {', '.join(eventloop.LOOPS)}")
    if config.max_pending < 1:
        raise ConfigError(EXIT_CONFIG, "max_pending must be at least 1", "set max_pending to 1 or more")
    return config


def check_environment(config: NodeConfig) -> str:
    """Fail early on what would otherwise break the first task; returns the codex version line."""
    if not os.path.isdir(config.cwd):
        raise ConfigError(EXIT_CWD, f"cwd does not exist or is not a directory: {config.cwd}",
                          "create the directory or point `cwd` at an existing one")
    try:
        out = subprocess.run([config.codex_bin, "--version"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        raise ConfigError(EXIT_CODEX, f"codex binary not found: {config.codex_bin}",
                          "install @openai/codex and set `codex_bin` to its native binary") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(EXIT_CODEX, f"codex binary does not run: {config.codex_bin}: {exc}",
                          "check that `codex_bin` is an executable codex binary") from None
    if out.returncode != 0:
        raise ConfigError(EXIT_CODEX, f"`{config.codex_bin} --version` exited {out.returncode}",
                          "check that `codex_bin` is a working codex binary")
    return out.stdout.strip()
