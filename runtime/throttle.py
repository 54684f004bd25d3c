"""At most one call per interval, and the latest change never held back: how the node paces a turn's progress
frames and the bot its progress edits (Telegram allows about one edit per second per chat)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from runtime.aiotasks import Background, cancel


class Throttle:
    """`poke()` says something changed; `flush()` then runs at once if the last one ended `interval` ago, else
    when it has (the trailing edge), reading the state as it is by then. The spacing counts from the end of a
    flush, so one slowed down (a 429's retry_after) pushes the next one back instead of bunching them up."""

    def __init__(self, interval: float, flush: Callable[[], Awaitable[None]], tasks: Background, name: str,
                 last: float = float("-inf")) -> None:
        self.interval = interval
        self.flush = flush
        self.tasks = tasks
        self.name = name
        self._dirty = False
        self._last = last  # when the last call ended (time.monotonic()); a write made elsewhere may count as one
        self._runner: asyncio.Task[None] | None = None

    def poke(self) -> None:
        self._dirty = True
        if self._runner is None or self._runner.done():
            self._runner = self.tasks.spawn(self._run(), self.name)

    async def _run(self) -> None:
        while self._dirty:  # ends once a flush saw every change
            if (wait := self._last + self.interval - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            self._dirty = False
            try:
                await self.flush()
            finally:
                self._last = time.monotonic()

    def due_in(self) -> float:
        """Seconds until a call would keep the spacing: what a last call outside the throttle waits first."""
        return max(0.0, self._last + self.interval - time.monotonic())

    async def close(self) -> None:
        """No flush after this one returns (one running now is cancelled)."""
        self._dirty = False
        if self._runner is not None and self._runner is not asyncio.current_task():
            await cancel(self._runner)
