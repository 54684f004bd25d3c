"""Node settings, declared once; runtime/settings.py reads them from flags, CODEX_RELAY_NODE_* and --config.

Startup checks fail with one structured line and a documented exit code, never a traceback.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated

from runtime import eventloop, tls
from runtime.node import roots
from runtime.settings import LOG_LEVELS, ConfigError, Loader, setting, state_dir

# Documented exit codes (README, "Node"), after runtime.settings.EXIT_CONFIG (2) for every bad setting.
EXIT_CWD = 3         # cwd does not exist or is not a directory
EXIT_CODEX = 4       # the codex binary is missing or does not run


@dataclass(frozen=True)
class NodeConfig:
    node_id: Annotated[str, setting("this node's name, as its token was created for", required=True)] = ""
    token: Annotated[str, setting("node token from the manager's POST /api/tokens", secret=True,
                                  required=True)] = field(default="", repr=False)
    manager_url: Annotated[str, setting("the manager's node WebSocket URL; wss:// for TLS")] = \
        "ws://127.0.0.1:8780/ws/node"
    tls_ca: Annotated[str, setting("PEM CA file the manager's certificate must chain to (wss:// only)")] = ""
    tls_fingerprint: Annotated[str, setting("SHA-256 of the manager's certificate, pinned instead of a CA "
                                            "(wss:// only)")] = ""
    cwd: Annotated[str, setting("directory Codex works in by default")] = "."
    allowed_roots: Annotated[tuple[str, ...], setting("directories a chat's thread may work in (each with what lies "
                                                      "below it); empty allows only `cwd`")] = ()
    codex_bin: Annotated[str, setting("codex binary: the native one, not the node_modules/.bin wrapper")] = "codex"
    codex_home: Annotated[str, setting("CODEX_HOME for the codex child; empty inherits the environment's")] = ""
    state_dir: Annotated[str, setting("where the node keeps finished results until the manager has them; empty "
                                      "is $XDG_STATE_HOME (or ~/.local/state)/codex-relay/<node_id>")] = ""
    approval_policy: Annotated[str, setting("Codex approvalPolicy for new threads")] = "on-request"
    sandbox: Annotated[str, setting("Codex sandbox for new threads")] = "read-only"
    max_pending: Annotated[int, setting("turns queued or running at once; more are refused as queue_full",
                                        ge=1)] = 10
    task_timeout: Annotated[float, setting("seconds one task may run", gt=0)] = 300.0
    drain_timeout: Annotated[float, setting("seconds a stopping node (SIGTERM) lets running turns finish before "
                                            "it interrupts them", ge=0)] = 60.0
    approval_timeout: Annotated[float, setting("seconds an approval request (or a question codex asks) waits for the "
                                               "user", gt=0)] = 120.0
    # codex 0.171 offers its request_user_input tool outside Plan mode only with this feature of its own on.
    user_questions: Annotated[bool, setting("let codex ask the chat's user questions mid-turn (options as buttons, "
                                            "or a typed answer): starts codex with its feature "
                                            "default_mode_request_user_input on")] = True
    rpc_timeout: Annotated[float, setting("seconds one app-server call may take", gt=0)] = 30.0
    heartbeat_interval: Annotated[float, setting("seconds between heartbeats to the manager", gt=0)] = 5.0
    # If the manager stops answering heartbeats for this long, the link is presumed dead.
    manager_silence: Annotated[float, setting("seconds without a frame from the manager before the link counts "
                                              "as dead", gt=0)] = 15.0
    backoff_initial: Annotated[float, setting("seconds before the first reconnect", gt=0)] = 0.5
    backoff_factor: Annotated[float, setting("growth of the reconnect delay per attempt", ge=1)] = 1.7
    backoff_max: Annotated[float, setting("longest reconnect delay in seconds", gt=0)] = 10.0
    backoff_jitter: Annotated[float, setting("each reconnect delay varies at random by up to this share",
                                             ge=0, le=1)] = 0.1
    progress_interval: Annotated[float, setting("seconds between progress messages of one turn", ge=0)] = 0.5
    # Readiness (runtime/node/readiness.py): codex's login and the model provider, told to the manager.
    readiness_interval: Annotated[float, setting("seconds between checks of codex's login and the model provider; "
                                                 "0 checks only at start and before a turn on a node that is not "
                                                 "ready", ge=0)] = 60.0
    provider_timeout: Annotated[float, setting("seconds the model provider has to answer the readiness probe",
                                               gt=0)] = 5.0
    provider_wait: Annotated[float, setting("seconds a turn may wait while codex waits for the network to reach "
                                            "the model provider; then it fails as provider_unreachable", gt=0)] = 60.0
    # Codex keeps every thread it loaded in memory: the node restarts its child between turns past these bounds.
    recycle_rss_mb: Annotated[int, setting("restart the codex child between turns once its RSS passes this many "
                                           "MiB; 0 never", ge=0)] = 1024
    recycle_threads: Annotated[int, setting("restart the codex child between turns once it has loaded this many "
                                            "threads; 0 never", ge=0)] = 100
    recycle_fds: Annotated[int, setting("restart the codex child between turns once it holds this many open "
                                        "files; 0 never", ge=0)] = 2000
    appserver_log: Annotated[str, setting("file to write the codex app-server traffic to, both ways, as JSON lines "
                                          "with secrets redacted (rotates at 64 MiB); for debugging; empty is "
                                          "off")] = ""
    log_level: Annotated[str, setting("log level", choices=LOG_LEVELS)] = "info"
    event_loop: Annotated[str, setting("event loop; asyncio e.g. for its debug mode",
                                       choices=eventloop.LOOPS)] = eventloop.DEFAULT


SETTINGS = Loader(NodeConfig, "node", "Codex Relay node: runs Codex on this machine for the manager. "
                  "`codex-relay-node doctor [settings]` checks this machine's setup instead, one line per check.",
                  legacy_env_prefix="CODEX_NODE_")


def load(argv: Sequence[str] | None = None) -> NodeConfig:
    config = SETTINGS.load(argv)
    tls.client_ssl(config.manager_url, config.tls_ca, config.tls_fingerprint)  # a bad TLS setting stops the start
    # The codex child runs in `cwd`: a relative binary path must not be resolved from there.
    codex_bin = config.codex_bin if os.sep not in config.codex_bin else os.path.abspath(config.codex_bin)
    # Real paths: a thread's directory is resolved before it is compared with them (runtime/node/roots.py).
    cwd = os.path.realpath(config.cwd)
    allowed = tuple(dict.fromkeys(os.path.realpath(r) for r in config.allowed_roots or (cwd,)))
    return replace(config, codex_bin=shutil.which(codex_bin) or codex_bin, cwd=cwd, allowed_roots=allowed,
                   state_dir=state_dir(config.state_dir, config.node_id))


def check_environment(config: NodeConfig) -> str:
    """Fail early on what would otherwise break the first task; returns the codex version line."""
    check_cwd(config)
    return codex_version(config)


def check_cwd(config: NodeConfig) -> None:
    if not os.path.isdir(config.cwd):
        raise ConfigError(f"cwd does not exist or is not a directory: {config.cwd}",
                          f"create the directory or point {SETTINGS.where('cwd')} at an existing one", EXIT_CWD)
    for root in config.allowed_roots:
        if not os.path.isdir(root):
            raise ConfigError(f"allowed root does not exist or is not a directory: {root}",
                              f"create it or remove it from {SETTINGS.where('allowed_roots')}", EXIT_CWD)
    if roots.within(config.cwd, config.allowed_roots) is None:
        raise ConfigError(f"cwd {config.cwd} is outside allowed_roots ({', '.join(config.allowed_roots)})",
                          f"add it to {SETTINGS.where('allowed_roots')}, or set `cwd` inside one of them")


def codex_version(config: NodeConfig) -> str:
    """`codex --version`'s line; a binary that is missing or does not run is a ConfigError naming the fix."""
    try:
        out = subprocess.run([config.codex_bin, "--version"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        raise ConfigError(f"codex binary not found: {config.codex_bin}",
                          f"install @openai/codex and set {SETTINGS.where('codex_bin')} to its native binary",
                          EXIT_CODEX) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"codex binary does not run: {config.codex_bin}: {exc}",
                          "check that `codex_bin` is an executable codex binary", EXIT_CODEX) from None
    if out.returncode != 0:
        raise ConfigError(f"`{config.codex_bin} --version` exited {out.returncode}",
                          "check that `codex_bin` is a working codex binary", EXIT_CODEX)
    return out.stdout.strip()
