"""Capped exponential backoff with jitter: the one retry schedule every loop in the project uses."""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays initial, initial*factor, ... up to cap, each spread by +-jitter (a fraction).

    `factor=1` makes it a fixed poll interval. `reset()` after a success starts the schedule over.
    """

    initial: float
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.0
    attempt: int = 0

    def next(self) -> float:
        """The delay before the next try; each call moves one step along the schedule."""
        base = min(self.initial * self.factor ** self.attempt, self.cap)
        self.attempt += 1
        return base * (1 + random.uniform(-self.jitter, self.jitter)) if self.jitter else base

    def reset(self) -> None:
        self.attempt = 0

    async def sleep(self, limit: float | None = None) -> float:
        """Sleep the next delay (never past `limit` seconds) and return what was slept."""
        delay = self.next() if limit is None else max(0.0, min(self.next(), limit))
        await asyncio.sleep(delay)
        return delay

    async def tries(self, timeout: float) -> AsyncIterator[int]:
        """Yield 0, 1, 2, ... until `timeout` seconds have passed, sleeping the schedule in between.

        The caller breaks (or returns) on success; falling out of the loop means the time ran out.
        """
        deadline = time.monotonic() + timeout
        number = 0
        while True:
            yield number
            number += 1
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await self.sleep(left)
