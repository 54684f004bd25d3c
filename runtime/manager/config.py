"""Manager settings: CLI flags over environment variables over defaults."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from runtime import eventloop


@dataclass(frozen=True)
class ManagerConfig:
    host: str = "127.0.0.1"  # loopback by default: exposing the control API is an explicit choice
    port: int = 8780
    db: str = "manager.sqlite3"
    control_token: str = ""
    heartbeat_interval: float = 5.0
    offline_timeout: float = 15.0
    register_timeout: float = 10.0
    busy_timeout_ms: int = 2000
    # How long past its deadline an open task waits for a late result before it is failed as timed out.
    result_grace: float = 120.0
    sweep_interval: float = 1.0
    log_level: str = "info"
    event_loop: str = eventloop.DEFAULT
    # Seconds between scheduled full GC passes (runtime/manager/collector.py); 0 keeps CPython's schedule.
    gc_interval: float = 300.0


ENV_PREFIX = "CODEX_RELAY_"


def parse(argv: list[str] | None = None) -> ManagerConfig:
    d = ManagerConfig()
    env = os.environ
    p = argparse.ArgumentParser(prog="codex-relay-manager", description="Codex Relay manager")
    p.add_argument("--host", default=env.get(ENV_PREFIX + "HOST", d.host))
    p.add_argument("--port", type=int, default=int(env.get(ENV_PREFIX + "PORT", d.port)))
    p.add_argument("--db", default=env.get(ENV_PREFIX + "DB", d.db))
    p.add_argument("--control-token", default=env.get(ENV_PREFIX + "CONTROL_TOKEN", d.control_token),
                   help="bearer token for the control API (env CODEX_RELAY_CONTROL_TOKEN)")
    p.add_argument("--heartbeat-interval", type=float, default=d.heartbeat_interval)
    p.add_argument("--offline-timeout", type=float, default=d.offline_timeout)
    p.add_argument("--register-timeout", type=float, default=d.register_timeout)
    p.add_argument("--busy-timeout-ms", type=int, default=d.busy_timeout_ms)
    p.add_argument("--result-grace", type=float, default=d.result_grace)
    p.add_argument("--sweep-interval", type=float, default=d.sweep_interval)
    p.add_argument("--log-level", default=env.get(ENV_PREFIX + "LOG_LEVEL", d.log_level))
    p.add_argument("--gc-interval", type=float, default=d.gc_interval,
                   help="seconds between scheduled full GC passes; 0 keeps CPython's own schedule")
    p.add_argument("--event-loop", choices=eventloop.LOOPS,
                   default=env.get(ENV_PREFIX + "EVENT_LOOP", d.event_loop))
    a = p.parse_args(argv)
    if not a.control_token:
        p.error("a control token is required: pass --control-token or set CODEX_RELAY_CONTROL_TOKEN")
    if a.offline_timeout <= a.heartbeat_interval:
        p.error("--offline-timeout must be longer than --heartbeat-interval, or every node flaps offline")
    if a.event_loop not in eventloop.LOOPS:  # argparse checks choices for flags, not for the env default
        p.error(f"unknown event loop {a.event_loop!r} in CODEX_RELAY_EVENT_LOOP: use one of {', '.join(eventloop.LOOPS)}")
    if a.gc_interval < 0:
        p.error("--gc-interval must be 0 (off) or a positive number of seconds")
    return ManagerConfig(**{k: v for k, v in vars(a).items()})
