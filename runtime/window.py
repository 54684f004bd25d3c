"""A sliding-window count per key, bounded in memory: how the manager slows an address that keeps guessing tokens
and the bot a user who floods it. The oldest keys are forgotten first."""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Hashable

MAX_KEYS = 10_000


class SlidingWindow:
    def __init__(self, limit: int, window: float, max_keys: int = MAX_KEYS) -> None:
        self.limit = limit  # events allowed per key in any `window` seconds; 0 allows everything
        self.window = window
        self.max_keys = max_keys
        self._seen: OrderedDict[Hashable, deque[float]] = OrderedDict()

    def wait(self, key: Hashable) -> float:
        """Seconds until `key` may have one more event; 0 when it may now."""
        recent = self._recent(key)
        if not self.limit or recent is None or len(recent) < self.limit:
            return 0.0
        return max(0.0, recent[0] + self.window - time.monotonic())

    def add(self, key: Hashable) -> None:
        if not self.limit:
            return
        recent = self._recent(key)
        if recent is None:
            recent = self._seen[key] = deque(maxlen=self.limit)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
        recent.append(time.monotonic())

    def _recent(self, key: Hashable) -> deque[float] | None:
        if (recent := self._seen.get(key)) is None:
            return None
        while recent and recent[0] + self.window < time.monotonic():
            recent.popleft()
        self._seen.move_to_end(key)
        return recent
