"""Frames to one WebSocket peer (a node or an event subscriber), bounded in bytes and in time.

Nothing in the manager ever waits on a peer: `put` queues a frame and returns at once, and a writer task,
started when there is something to send and gone when the queue is empty, sends them (10,000 idle nodes hold
no task at all). A peer that lets its queue grow past the byte budget, or takes longer than the send
timeout to take one frame (a sleeping laptop, a SIGSTOPped node, a black-holed link), is cut off: its
transport is aborted, which ends its handler, and the rest of the manager goes on.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from runtime.aiotasks import Background, cancel
from runtime.logfmt import log

logger = logging.getLogger("codex_manager.sender")


@dataclass(frozen=True)
class Limits:
    budget: int  # bytes queued for one peer before it is cut off
    send_timeout: float  # seconds one frame may take to leave
    close_timeout: float  # seconds a polite close may take before the socket is aborted


class Sender:
    # One per node session and subscriber: slots, and no queue or event until needed, keep 10,000 of them small.
    __slots__ = ("ws", "transport", "limits", "peer", "counters", "tasks", "queued", "dropped", "_finished",
                 "_queue", "_writer", "_finishing", "_held")

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, limits: Limits, peer: str,
                 counters: Counter[str], tasks: Background) -> None:
        self.ws = ws
        self.transport = request.transport
        self.limits = limits
        self.peer = peer
        self.counters = counters
        self.tasks = tasks
        self.queued = 0  # bytes waiting in the queue or being written
        self.dropped: str | None = None
        self._finished: asyncio.Event | None = None  # see `finished`
        self._queue: deque[bytes] | None = None  # an empty deque is 760 bytes: made when first needed
        self._writer: asyncio.Task[None] | None = None
        self._finishing = False
        self._held: list[tuple[int, bytes]] | None = None  # live events kept back while missed ones are queued

    @property
    def finished(self) -> asyncio.Event:
        """Set once finish()ed and flushed, or dropped: the peer's handler may end."""
        if self._finished is None:
            self._finished = asyncio.Event()
            if self.dropped is not None or (self._finishing and self._writer is None):
                self._finished.set()
        return self._finished

    def _set_finished(self) -> None:
        if self._finished is not None:
            self._finished.set()

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
        if self._queue is None:
            self._queue = deque()
        self._queue.append(frame)
        if self._writer is None:
            self._writer = self.tasks.spawn(self._flush(), f"send-{self.peer}")
        return True

    def finish(self) -> None:
        """Let the peer's handler end once what is queued has gone (a shutdown)."""
        self._finishing = True
        if self._writer is None:
            self._set_finished()

    async def _flush(self) -> None:
        """The writer: one frame at a time, each within the send timeout, until the queue is empty."""
        queue = self._queue
        assert queue is not None  # put() makes it before it starts a writer
        try:
            while queue and self.dropped is None:
                frame = queue[0]
                try:
                    async with asyncio.timeout(self.limits.send_timeout):
                        await self.ws.send_frame(frame, WSMsgType.TEXT)
                except TimeoutError:
                    self.drop("send_timeout", queued=self.queued)
                    return
                except (ConnectionError, RuntimeError):
                    return  # closed under us: the handler notices on its own
                if queue and queue[0] is frame:
                    queue.popleft()
                    self.queued -= len(frame)
        finally:
            self._writer = None
            if not queue and self._queue is queue:
                self._queue = None  # idle peers keep no deque
            if self._finishing or self.dropped is not None:
                self._set_finished()

    def drop(self, reason: str, **fields: int) -> None:
        """Cut the peer off now, without waiting on it."""
        if self.dropped is not None:
            return
        self.dropped = reason
        self.counters[f"peers_dropped_{reason}"] += 1
        log(logger, logging.WARNING, "peer_dropped", peer=self.peer, reason=reason, **fields)
        if self.transport is not None:
            self.transport.abort()
        self._queue = None
        self.queued = 0
        self._set_finished()

    async def stop(self) -> None:
        """The peer's handler is done: nothing more goes out."""
        if self._writer is not None:
            await cancel(self._writer)

    async def close(self, code: int, message: bytes) -> None:
        """A polite close, bounded: a peer that does not take the close frame in time is aborted."""
        if self.ws.closed or self.dropped is not None:
            return
        try:
            async with asyncio.timeout(self.limits.close_timeout):
                await self.ws.close(code=code, message=message)
        except TimeoutError:
            self.drop("close_timeout")
