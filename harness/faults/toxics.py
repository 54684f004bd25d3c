"""Network faults through Toxiproxy: proxies per link, toxics and links down as scopes that undo themselves.

`toxiproxy-python` is synchronous, with class-level host/port and no request timeout, so it is wrapped
here once: every call runs on a daemon thread behind a timeout, and a hung Toxiproxy fails the call.
"""
from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import toxiproxy
from toxiproxy.api import APIConsumer

from harness.faults.window import FaultLog, FaultWindow

# The toxiproxy client goes through `requests`, which would honour an HTTP proxy from the environment.
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

CALL_TIMEOUT_S = 15.0
# APIConsumer's host and port are class attributes: one call at a time per harness process, so two
# stacks' calls never swap servers.
_CLIENT_LOCK = threading.Lock()
T = TypeVar("T")


class ToxiproxyTimeout(TimeoutError):
    """Toxiproxy did not answer in time."""


class Toxics:
    """The one wrapper around toxiproxy-python for a run's Toxiproxy server."""

    def __init__(self, host: str, port: int, log: FaultLog, shared_prefix: str | None = None) -> None:
        self.host, self.port, self.log = host, port, log
        # On a Toxiproxy shared with other stacks (TOXIPROXY_URL, parallel workers), only proxies named
        # with this prefix are ours to reset.
        self.shared_prefix = shared_prefix
        self._server = toxiproxy.Toxiproxy()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn` on a daemon thread, within CALL_TIMEOUT_S.

        Not asyncio.to_thread: a call stuck in `requests` (which has no timeout here) would hold the
        default executor, and asyncio.run waits for that executor's threads at exit, forever.
        """
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if not answer.done():
                answer.set_exception(error) if error is not None else answer.set_result(value)

        def work() -> None:
            try:
                with _CLIENT_LOCK:
                    APIConsumer.host, APIConsumer.port = self.host, self.port
                    value, error = fn(*args, **kwargs), None
            except Exception as exc:  # handed to the awaiting coroutine, which raises it
                value, error = None, exc
            try:
                loop.call_soon_threadsafe(settle, value, error)
            except RuntimeError:
                pass  # the loop closed while Toxiproxy hung: nobody is waiting any more

        threading.Thread(target=work, name=f"toxiproxy-{getattr(fn, '__name__', 'call')}", daemon=True).start()
        try:
            return await asyncio.wait_for(answer, CALL_TIMEOUT_S)
        except TimeoutError:
            raise ToxiproxyTimeout(
                f"Toxiproxy at {self.host}:{self.port} did not answer {getattr(fn, '__name__', 'a call')} within "
                f"{CALL_TIMEOUT_S:g}s: it is hung or overloaded; restart it (or unset TOXIPROXY_URL so the harness "
                "starts its own)") from None

    async def create(self, name: str, upstream_port: int) -> int:
        """A proxy to 127.0.0.1:upstream_port; returns the port Toxiproxy bound for it.

        Toxiproxy binds port 0 itself and reports the port, so two xdist workers never race for one.
        """
        stale = await self._call(self._server.get_proxy, name)
        if stale is not None:  # left by an earlier run on a shared Toxiproxy
            await self._call(stale.destroy)
        proxy = await self._call(self._server.create, upstream=f"127.0.0.1:{upstream_port}", name=name,
                                 listen="127.0.0.1:0", enabled=True)
        return int(str(proxy.listen).rsplit(":", 1)[1])

    async def retarget(self, name: str, upstream_port: int) -> None:
        """Point a proxy at another upstream port; it keeps its listen port. For a server that learns its port
        only after it was told where it is reached (the bot's webhook, on port 0)."""
        await self._proxy(name)
        await self._call(APIConsumer.post, f"/proxies/{name}", json={"upstream": f"127.0.0.1:{upstream_port}"})

    async def reset(self) -> None:
        """Every proxy enabled, every toxic gone: the clean state between cases."""
        if self.shared_prefix is None:
            await self._call(self._server.reset)
            return
        prefix = self.shared_prefix

        def ours() -> None:
            for name, proxy in self._server.proxies().items():
                if name.startswith(prefix):
                    for toxic in proxy.toxics():
                        proxy.destroy_toxic(toxic)
                    proxy.enable()
        await self._call(ours)

    async def _proxy(self, name: str) -> Any:
        proxy = await self._call(self._server.get_proxy, name)
        if proxy is None:
            raise KeyError(f"no Toxiproxy proxy {name!r}")
        return proxy

    @asynccontextmanager
    async def link_down(self, name: str) -> AsyncIterator[FaultWindow]:
        proxy = await self._proxy(name)
        async with self.log.window("link_down", name) as w:
            await self._call(proxy.disable)
            try:
                yield w
            finally:
                await self._call(proxy.enable)

    @asynccontextmanager
    async def toxic(self, name: str, kind: str, stream: str = "downstream", toxicity: float = 1.0,
                    **attributes: float) -> AsyncIterator[FaultWindow]:
        proxy = await self._proxy(name)
        toxic_name = f"{kind}_{stream}"
        async with self.log.window(kind, name, stream=stream, **attributes) as w:
            await self._call(proxy.add_toxic, type=kind, name=toxic_name, stream=stream, toxicity=toxicity,
                             attributes=attributes)
            try:
                yield w
            finally:
                await self._call(proxy.destroy_toxic, toxic_name)

    def latency(self, name: str, ms: int, jitter: int = 0,
                stream: str = "downstream") -> AbstractAsyncContextManager[FaultWindow]:
        return self.toxic(name, "latency", stream, latency=ms, jitter=jitter)

    def hold(self, name: str, ms: int = 0, stream: str = "downstream") -> AbstractAsyncContextManager[FaultWindow]:
        """Toxiproxy's `timeout` toxic: data stops; with ms>0 the connection closes after ms."""
        return self.toxic(name, "timeout", stream, timeout=ms)

    def throttle(self, name: str, rate_kb_s: int, stream: str = "downstream") -> AbstractAsyncContextManager[FaultWindow]:
        """Toxiproxy's `bandwidth` toxic; rate 0 would mean no limit there, so a slow consumer is a rate of 1 or so."""
        return self.toxic(name, "bandwidth", stream, rate=rate_kb_s)

    def reset_peer(self, name: str, ms: int = 0,
                   stream: str = "downstream") -> AbstractAsyncContextManager[FaultWindow]:
        return self.toxic(name, "reset_peer", stream, timeout=ms)
