"""Whether this node can run turns: codex's login (`account/read`), its model provider reachable, codex's version.

Checked when the node starts, every `readiness_interval`, when codex says its account changed, and before a turn
on a node that is not ready (someone may have run `codex login` since). Each change is logged and told to the
manager, and a turn on a node that is not ready fails at once with the state's error kind, instead of waiting
out its deadline against a provider that will never answer.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgspec

from runtime.logfmt import log
from runtime.node.appserver import AppServer
from runtime.node.config import NodeConfig
from runtime.protocol import ERROR_KINDS, ErrorKind, ReadyState, RelayError
from runtime.protocol.wire import Readiness

logger = logging.getLogger("codex_node")

# codex's built-in `openai` provider lists no base URL: this is the one it uses.
OPENAI_URL = "https://api.openai.com/v1"
CHECK_RPC_TIMEOUT = 10.0  # a readiness call waits at most this for codex; a turn behind it must not wait long
NOT_READY = frozenset({ReadyState.NOT_LOGGED_IN, ReadyState.PROVIDER_UNREACHABLE})


async def probe(url: str, timeout: float) -> str | None:
    """None if the provider answers HTTP at all: any status, a 401 or a 404 included, proves the path to it.
    Proxy variables (HTTPS_PROXY, NO_PROXY) are honoured, as codex honours them."""
    try:
        async with aiohttp.ClientSession(trust_env=True, timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.get(url.rstrip("/") + "/models"):
                return None
    except TimeoutError:
        return f"{url} did not answer within {timeout:g}s"
    except aiohttp.ClientError as exc:
        return f"cannot reach {url}: {exc or type(exc).__name__}"


async def inspect(app: AppServer, codex_version: str, provider_timeout: float) -> Readiness:
    """Ask codex for its account and its default model provider, then probe that provider's base URL."""
    try:
        account: dict[str, Any] = await app.request("account/read", {}, CHECK_RPC_TIMEOUT) or {}
        providers: dict[str, Any] = await app.request("modelProvider/list", {}, CHECK_RPC_TIMEOUT) or {}
    except RelayError as err:
        return Readiness(codex_version=codex_version, problem=f"codex did not answer the readiness check: {err.error}",
                         checked_at=time.time())
    provider = str(providers.get("defaultProviderId") or "")
    entry: dict[str, Any] = next((p for p in providers.get("data") or [] if p.get("id") == provider), {})
    url = str(entry.get("baseUrl") or (OPENAI_URL if provider == "openai" else ""))
    unreachable = await probe(url, provider_timeout) if url else None
    kind = (account.get("account") or {}).get("type")
    requires_auth = bool(account.get("requiresOpenaiAuth"))
    if kind is None and requires_auth:
        state = ReadyState.NOT_LOGGED_IN
        problem: str | None = f"codex has no account, and its model provider {provider!r} requires OpenAI auth"
    elif unreachable is not None:
        state, problem = ReadyState.PROVIDER_UNREACHABLE, f"model provider {provider!r}: {unreachable}"
    else:
        state, problem = ReadyState.READY, None
    return Readiness(state=state, codex_version=codex_version, account=kind, requires_openai_auth=requires_auth,
                     provider=provider, provider_url=url, provider_reachable=None if not url else unreachable is None,
                     problem=problem, checked_at=time.time())


def fix(state: ReadyState) -> str | None:
    """What to do about a state that is not ready: its error kind's text."""
    return ERROR_KINDS[ErrorKind(state.value)].text if state in NOT_READY else None


class Monitor:
    """The node's current readiness, checked again when something may have changed it."""

    def __init__(self, config: NodeConfig, app: AppServer, codex_version: str,
                 on_change: Callable[[Readiness], Awaitable[None]]) -> None:
        self.config = config
        self.app = app
        self.current = Readiness(codex_version=codex_version)
        self.on_change = on_change
        self._lock = asyncio.Lock()
        self._poke = asyncio.Event()

    def poke(self) -> None:
        """Check again soon: codex said its account changed, or a turn could not reach the provider."""
        self._poke.set()

    async def run_forever(self) -> None:
        await self.app.ready.wait()
        while True:
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - a bug in one check must not end the checks; it is logged
                log(logger, logging.ERROR, "readiness_check_failed", node_id=self.config.node_id,
                    error=f"{type(exc).__name__}: {exc}")
            try:
                await asyncio.wait_for(self._poke.wait(), self.config.readiness_interval or None)
            except TimeoutError:
                pass
            self._poke.clear()

    async def admit(self) -> None:
        """Before a turn: a node not known to be ready checks again at once and refuses if it still is not."""
        if self.current.state == ReadyState.READY or (self.current.state == ReadyState.UNKNOWN
                                                      and self.current.checked_at):
            return  # ready, or a check that could not tell: codex itself will say what is wrong
        found = await self.check(since=time.time())
        if found.state in NOT_READY:
            raise RelayError(ErrorKind(found.state.value), found.problem)

    async def check(self, since: float = 0.0) -> Readiness:
        """Check now; a caller that asked at `since` takes a check that finished after that instead."""
        async with self._lock:
            if since and self.current.checked_at >= since:
                return self.current
            if self.current.state == ReadyState.NOT_LOGGED_IN:
                # A running codex reads its login once, at start: only a new child sees a `codex login` done since.
                await self.app.recycle("codex reads its login at start; re-reading it")
            found = await inspect(self.app, self.current.codex_version, self.config.provider_timeout)
            changed = msgspec.structs.replace(found, checked_at=0) != msgspec.structs.replace(self.current,
                                                                                             checked_at=0)
            self.current = found
            if changed:  # under the lock, so the manager hears the changes in the order they happened
                ready = found.state == ReadyState.READY
                log(logger, logging.INFO if ready else logging.WARNING, "node_ready" if ready else "node_not_ready",
                    node_id=self.config.node_id, state=found.state.value, problem=found.problem,
                    fix=fix(found.state), account=found.account, provider=found.provider,
                    provider_url=found.provider_url, codex_home=self.config.codex_home or None,
                    codex=found.codex_version)
                await self.on_change(found)
        return found
