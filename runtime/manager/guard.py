"""Connections that have not sent a whole request head are cheap and bounded: a deadline and a cap.

aiohttp waits for a request head as long as the peer likes, so an idle socket, or headers sent a byte at a
time, would be held forever. Each connection is handed to aiohttp through a thin protocol that watches for the
end of the first head (a blank line): past `header_timeout`, or beyond `max_connecting` such connections at
once, the socket is aborted. After its first head a connection is aiohttp's alone (keep-alive timeout,
WebSocket): the guard hands the transport to aiohttp's protocol and is gone.
It is served as an aiohttp site (web.BaseSite, the public way to add one), so the runner still owns shutdown.
"""
from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from typing import Any, cast

from aiohttp import web

HEAD_END = b"\r\n\r\n"


class Connecting:
    """The connections still sending their first request head, and the limits on them."""

    def __init__(self, header_timeout: float, max_connecting: int, counters: Counter[str]) -> None:
        self.header_timeout = header_timeout
        self.max_connecting = max_connecting
        self.counters = counters
        self.count = 0


class HeadGuard(asyncio.Protocol):
    __slots__ = ("inner", "connecting", "transport", "waiting", "handed", "tail", "timer")  # one per connection

    def __init__(self, inner: asyncio.Protocol, connecting: Connecting) -> None:
        self.inner = inner
        self.connecting = connecting
        self.transport: asyncio.Transport | None = None
        self.waiting = False  # counted in `connecting` until its head is complete
        self.handed = False  # aiohttp's handler has seen connection_made
        self.tail = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server's transports are stream transports
        c = self.connecting
        if c.count >= c.max_connecting:
            c.counters["connections_refused_busy"] += 1
            self.transport.abort()
            return
        c.count += 1
        self.waiting = True
        self.timer = asyncio.get_running_loop().call_later(c.header_timeout, self._expire)
        self.handed = True
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.waiting:
            self.inner.data_received(data)
            return
        if HEAD_END not in self.tail + data:
            self.tail = (self.tail + data)[-3:]
            self.inner.data_received(data)
            return
        self._headed()
        # From its first head on, the connection is aiohttp's alone: the transport talks to aiohttp's protocol
        # directly (a public transport call), so a held node socket costs no guard and no extra call per read.
        if self.transport is not None:
            self.transport.set_protocol(self.inner)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headed()
        if self.handed:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _headed(self) -> None:
        if self.waiting:
            self.waiting = False
            self.connecting.count -= 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        if self.waiting and self.transport is not None:
            self.connecting.counters["connections_closed_header_timeout"] += 1
            self.transport.abort()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through HeadGuard."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, connecting: Connecting,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port, self.connecting = host, port, connecting
        self._bound = port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._bound}"

    async def start(self) -> None:
        await super().start()
        handler_factory: Any = self._runner.server
        assert handler_factory is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HeadGuard(handler_factory(), self.connecting), self._host, self._port, ssl=self._ssl_context,
            # A TLS handshake that never ends is the same idle socket, one layer down.
            ssl_handshake_timeout=self.connecting.header_timeout if self._ssl_context else None)
        if self._server.sockets:
            self._bound = self._server.sockets[0].getsockname()[1]
