"""Frames to one WebSocket peer (a node or an event subscriber), bounded in bytes and in time.

Nothing in the manager ever waits on a peer: `put` queues a frame and returns at once, and one writer task
per peer sends them. A peer that lets its queue grow past the byte budget, or takes longer than the send
timeout to take one frame (a sleeping laptop, a SIGSTOPped node, a black-holed link), is cut off: its
transport is aborted, which ends its handler, and the rest of the manager goes on.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from runtime.logfmt import log

logger = logging.getLogger("codex_manager.sender")


@dataclass(frozen=True)
class Limits:
    budget: int  # bytes queued for one peer before it is cut off
    send_timeout: float  # seconds one frame may take to leave
    close_timeout: float  # seconds a polite close may take before the socket is aborted


class Sender:
    def __init__(self, ws: web.WebSocketResponse, request: web.Request, limits: Limits, peer: str,
                 counters: Counter[str]) -> None:
        self.ws = ws
        self.transport = request.transport
        self.limits = limits
        self.peer = peer
        self.counters = counters
        self.queued = 0  # bytes waiting in the queue or being written
        self.dropped: str | None = None
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._held: list[tuple[int, bytes]] | None = None  # live events kept back while missed ones are queued

    @property
    def open(self) -> bool:
        return self.dropped is None and not self.ws.closed

    def hold(self) -> None:
        """Keep live frames back until release(): a reconnecting subscriber gets what it missed first."""
        self._held = []

    def release(self, first: list[bytes], replayed_up_to: int) -> None:
        """Queue `first` (a hello, the replay), then the frames held meanwhile, less those the replay already
        carried (numbered up to `replayed_up_to`)."""
        held, self._held = self._held or [], None
        for frame in first:
            self.put(frame)
        for seq, frame in held:
            if seq == 0 or seq > replayed_up_to:
                self.put(frame, seq)

    def put(self, frame: bytes, seq: int = 0) -> bool:
        """Queue one frame; False if the peer is gone or was just cut off for falling behind."""
        if not self.open:
            return False
        if self._held is not None:
            self._held.append((seq, frame))
            return True
        if self.queued + len(frame) > self.limits.budget:
            self.drop("send_budget", queued=self.queued, frame=len(frame))
            return False
        self.queued += len(frame)
        self._queue.put_nowait(frame)
        return True

    def finish(self) -> None:
        """Let the writer end after what is queued (a shutdown)."""
        self._queue.put_nowait(None)

    async def run(self) -> None:
        """The writer: one frame at a time, each within the send timeout."""
        while (frame := await self._queue.get()) is not None:
            try:
                async with asyncio.timeout(self.limits.send_timeout):
                    await self.ws.send_frame(frame, WSMsgType.TEXT)
            except TimeoutError:
                self.drop("send_timeout", queued=self.queued)
                return
            except (ConnectionError, RuntimeError):
                return  # closed under us: the handler notices on its own
            finally:
                self.queued -= len(frame)

    def drop(self, reason: str, **fields: int) -> None:
        """Cut the peer off now, without waiting on it."""
        if self.dropped is not None:
            return
        self.dropped = reason
        self.counters[f"peers_dropped_{reason}"] += 1
        log(logger, logging.WARNING, "peer_dropped", peer=self.peer, reason=reason, **fields)
        if self.transport is not None:
            self.transport.abort()
        self._queue.put_nowait(None)

    async def close(self, code: int, message: bytes) -> None:
        """A polite close, bounded: a peer that does not take the close frame in time is aborted."""
        if self.ws.closed or self.dropped is not None:
            return
        try:
            async with asyncio.timeout(self.limits.close_timeout):
                await self.ws.close(code=code, message=message)
        except TimeoutError:
            self.drop("close_timeout")
