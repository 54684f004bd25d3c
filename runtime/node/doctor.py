"""`codex-relay-node doctor --config node.toml`: is this machine ready to be a node? One line per check.

It reads the settings the node would read, then checks the working directory, the codex binary, codex's login
and its model provider (through a codex app-server of its own, as the node asks them), the manager, its TLS
certificate and the token, which the manager checks without registering anything, so a running node is left alone.
"""
from __future__ import annotations

import asyncio
import getpass
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from runtime import __version__, doctor, tls
from runtime.doctor import Check, fail, ok, skip
from runtime.node import config as config_mod
from runtime.node.appserver import AppServer
from runtime.node.config import SETTINGS, NodeConfig
from runtime.node.readiness import inspect
from runtime.protocol import PROTOCOL_VERSION, Api, ErrorKind, ReadyState, RelayError, kind_of, wire
from runtime.settings import ConfigError

ANSWER_TIMEOUT = 10.0  # seconds the manager has to answer each probe


def manager_http(ws_url: str) -> str:
    """The manager's HTTP base for a node socket URL: ws://h:p/ws/node -> http://h:p."""
    scheme, rest = ws_url.split("://", 1)
    return f"{'https' if scheme == 'wss' else 'http'}://{rest.removesuffix(Api.NODE_WS.value)}"


async def _no_server_requests(method: str, params: dict[str, Any], request_id: Any) -> dict[str, Any] | None:
    raise RelayError(ErrorKind.APPSERVER_ERROR, "the doctor runs no turns")


async def codex_checks(config: NodeConfig, version: str) -> AsyncIterator[Check]:
    """codex's login and its model provider, from a codex app-server of the doctor's own."""
    app = AppServer(config, lambda method, params: None, _no_server_requests, __version__)
    app.start()
    try:
        r = await inspect(app, version, config.provider_timeout)
    finally:
        await app.close()
    if r.state == ReadyState.UNKNOWN and not r.provider:
        yield fail("codex login", r.problem or "codex did not answer", f"run `{config.codex_bin} app-server` by hand "
                   "in `cwd`, with the node's CODEX_HOME, to see why it does not start")
        yield skip("provider", "needs codex to answer")
        return
    home = f"CODEX_HOME={config.codex_home} " if config.codex_home else ""
    if r.account:
        yield ok("codex login", f"logged in ({r.account})")
    elif r.state == ReadyState.NOT_LOGGED_IN:
        yield fail("codex login", r.problem or "not logged in", f"run `{home}codex login` (or pipe an API key to "
                   f"`{home}codex login --with-api-key`) on this machine as the user the node runs as (this doctor "
                   f"runs as {getpass.getuser()})")
    else:
        yield ok("codex login", f"none needed: model provider {r.provider!r} requires no OpenAI auth")
    if r.provider_reachable is False:
        yield fail("provider", r.problem or "unreachable", kind_of(ErrorKind.PROVIDER_UNREACHABLE).text)
    elif r.provider_reachable:
        yield ok("provider", f"{r.provider!r} answers at {r.provider_url}")
    else:
        yield ok("provider", f"{r.provider!r} has no base URL to probe; codex reaches it its own way")


async def manager_checks(config: NodeConfig) -> AsyncIterator[Check]:
    """The manager answers (over TLS with the node's trust settings, when wss://), and takes the token."""
    secure = tls.client_ssl(config.manager_url, config.tls_ca, config.tls_fingerprint)
    trust = "the pinned certificate" if config.tls_fingerprint else config.tls_ca or "the system's CAs"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=secure),
                                     timeout=aiohttp.ClientTimeout(total=ANSWER_TIMEOUT)) as http:
        lines, reached = await doctor.reach_manager(
            http, manager_http(config.manager_url), trust, f"start the manager, or point {SETTINGS.where('manager_url')} "
            "at it", f"set {SETTINGS.where('tls_ca')} or `tls_fingerprint` to what the manager serves")
        for line in lines:
            yield line
        yield await token_check(http, config) if reached else skip("token", "needs the manager reachable")


async def token_check(http: aiohttp.ClientSession, config: NodeConfig) -> Check:
    """A register frame marked `check`: the manager validates token and protocol and registers nothing."""
    probe = wire.Register(node_id=config.node_id, token=config.token, version=__version__, protocol=PROTOCOL_VERSION,
                          check=True)
    try:
        async with http.ws_connect(config.manager_url, max_msg_size=wire.MAX_FRAME_BYTES,
                                   headers={wire.NODE_AUTH_HEADER: wire.bearer(config.token)}) as ws:
            await ws.send_str(wire.encode_bytes(probe).decode())
            frame = await ws.receive(timeout=ANSWER_TIMEOUT)
        answer = wire.decode_manager_frame(frame.data) if frame.type == aiohttp.WSMsgType.TEXT else None
    except (TimeoutError, aiohttp.ClientError, OSError, RelayError) as exc:
        return fail("token", f"the manager gave no answer to the token: {exc or type(exc).__name__}",
                    "see the manager's log for op=register_refused")
    if isinstance(answer, wire.RegisterOk):
        return ok("token", f"accepted for node_id {config.node_id!r}")
    error = answer.error if isinstance(answer, wire.RegisterError) else "the manager closed the socket"
    if isinstance(answer, wire.RegisterError) and answer.error_kind == ErrorKind.UNAUTHORIZED:
        return fail("token", f"refused: {error}", f"mint a token for this node (`/token generate node={config.node_id}` "
                    f"in Telegram, or POST /api/tokens with node_id) and set {SETTINGS.where('token')}")
    return fail("token", f"refused: {error}", "see the manager's log for op=register_refused")


async def checks(argv: Sequence[str]) -> AsyncIterator[Check]:
    try:
        config = config_mod.load(argv)
    except ConfigError as err:
        yield fail("config", err.error, err.fix)
        for name in ("cwd", "codex", "codex login", "provider", "manager", "token"):
            yield skip(name, "needs a valid config")
        return
    yield ok("config", f"node_id={config.node_id}, manager_url={config.manager_url}")
    version = None
    try:
        config_mod.check_cwd(config)
        yield ok("cwd", config.cwd)
        version = await asyncio.to_thread(config_mod.codex_version, config)
        yield ok("codex", f"{config.codex_bin}: {version}")
    except ConfigError as err:
        yield fail("cwd" if err.exit_code == config_mod.EXIT_CWD else "codex", err.error, err.fix)
        if err.exit_code == config_mod.EXIT_CWD:
            yield skip("codex", "needs `cwd`, where it runs")
    if version is None:
        yield skip("codex login", "needs a codex that runs")
        yield skip("provider", "needs a codex that runs")
    else:
        async for check in codex_checks(config, version):
            yield check
    async for check in manager_checks(config):
        yield check


def main(argv: Sequence[str]) -> None:
    logging.getLogger("codex_node").setLevel(logging.ERROR)  # the doctor's own codex child, not the node's
    doctor.main(checks, argv)
