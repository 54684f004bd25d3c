"""Manager settings, declared once; runtime/settings.py reads them from flags, CODEX_RELAY_MANAGER_* and --config."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated

from runtime import eventloop, tls
from runtime.settings import LOG_LEVELS, ConfigError, Loader, setting


@dataclass(frozen=True)
class ManagerConfig:
    # Loopback by default: exposing the control API is an explicit choice.
    host: Annotated[str, setting("address to listen on; put a TLS proxy in front before exposing it")] = "127.0.0.1"
    port: Annotated[int, setting("TCP port for the control API and the node socket; 0 picks a free one",
                                 ge=0, le=65535)] = 8780
    db: Annotated[str, setting("SQLite database file; created if missing")] = "manager.sqlite3"
    tls_cert: Annotated[str, setting("PEM certificate (chain) to serve HTTPS/WSS with; empty serves plain "
                                     "HTTP, for loopback")] = ""
    tls_key: Annotated[str, setting("PEM private key of tls_cert")] = ""
    control_token: Annotated[str, setting("bearer token for the control API", secret=True, required=True)] = field(
        default="", repr=False)
    heartbeat_interval: Annotated[float, setting("seconds between node heartbeats, told to each node", gt=0)] = 5.0
    offline_timeout: Annotated[float, setting("seconds without a heartbeat before a node counts as offline; "
                                              "longer than heartbeat_interval", gt=0)] = 15.0
    register_timeout: Annotated[float, setting("seconds a new node socket has to register", gt=0)] = 10.0
    busy_timeout_ms: Annotated[int, setting("milliseconds SQLite waits for a locked database", ge=0)] = 2000
    result_grace: Annotated[float, setting("seconds past its deadline an open task waits for a late result "
                                           "before it fails as timed out", ge=0)] = 120.0
    sweep_interval: Annotated[float, setting("seconds between sweeps for overdue tasks and undelivered results",
                                             gt=0)] = 1.0
    log_level: Annotated[str, setting("log level", choices=LOG_LEVELS)] = "info"
    event_loop: Annotated[str, setting("event loop; asyncio e.g. for its debug mode",
                                       choices=eventloop.LOOPS)] = eventloop.DEFAULT
    retention_days: Annotated[float, setting("days finished tasks (with their prompts) and decided approvals are "
                                             "kept; 0 keeps them forever", ge=0)] = 30.0
    auth_failures: Annotated[int, setting("bad credentials one address may present per auth_window before it "
                                          "must wait (429); 0 never throttles", ge=0)] = 20
    auth_window: Annotated[float, setting("seconds over which auth_failures are counted", gt=0)] = 60.0
    # Hostile and broken peers: runtime/manager/sender.py says why every send is bounded.
    send_timeout: Annotated[float, setting("seconds one frame to a node or event subscriber may take to leave; "
                                           "a slower peer is disconnected", gt=0)] = 10.0
    send_budget: Annotated[int, setting("bytes queued for one node or event subscriber before it is "
                                        "disconnected", ge=1 << 16)] = 8 << 20
    close_timeout: Annotated[float, setting("seconds a closing socket may take before it is aborted", gt=0)] = 2.0
    header_timeout: Annotated[float, setting("seconds a new connection has to send its first request head; "
                                             "an idle or trickling socket is closed after that", gt=0)] = 10.0
    max_connecting: Annotated[int, setting("connections still sending their first request head at once; more "
                                           "are closed on arrival", ge=1)] = 256
    max_unregistered: Annotated[int, setting("node sockets not yet registered at once; more are refused until "
                                             "some register or time out", ge=1)] = 64
    preauth_frame_bytes: Annotated[int, setting("largest frame a node socket may send when its upgrade request "
                                                "carried no valid node token; nodes before protocol 3 send their "
                                                "token only in a frame, so raise it to 1048576 while such nodes are "
                                                "being upgraded", ge=1024, le=1 << 20)] = 8192
    # runtime/manager/collector.py says why the manager schedules its own full collections.
    gc_interval: Annotated[float, setting("seconds between scheduled full GC passes; 0 keeps CPython's own "
                                          "schedule", ge=0)] = 300.0


SETTINGS = Loader(ManagerConfig, "manager", "Codex Relay manager: the hub every node and bot talks to. "
                  "`codex-relay-manager doctor [settings]` checks its setup instead, one line per check; "
                  "`codex-relay-manager backup PATH` copies its database.",
                  legacy_env_prefix="CODEX_RELAY_")


def load(argv: Sequence[str] | None = None) -> ManagerConfig:
    config = SETTINGS.load(argv)
    tls.server_context(config.tls_cert, config.tls_key)  # a bad certificate stops the start, named
    if config.offline_timeout <= config.heartbeat_interval:
        raise ConfigError(f"offline_timeout ({config.offline_timeout:g} s) must be longer than heartbeat_interval "
                          f"({config.heartbeat_interval:g} s), or every node flaps offline",
                          f"raise {SETTINGS.where('offline_timeout')} or lower `heartbeat_interval`")
    return config
