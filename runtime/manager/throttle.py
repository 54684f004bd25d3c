"""Slows down guessing: an address that keeps presenting bad credentials is refused for a while, unasked.

Counted per remote address over a sliding window; past the limit every call from that address gets 429
`rate_limited` with the seconds to wait, before any token is looked at. Memory is bounded: the oldest
addresses are forgotten first.
"""
from __future__ import annotations

import time
from collections import Counter, OrderedDict, deque

from runtime.protocol import ErrorKind, RelayError

MAX_ADDRESSES = 10_000


class AuthThrottle:
    def __init__(self, failures: int, window: float) -> None:
        self.failures = failures  # bad credentials allowed per address per window; 0 turns throttling off
        self.window = window
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, address: str | None, counters: Counter[str]) -> None:
        """Refuse an address that must still wait, before its credentials are looked at."""
        if wait := self.wait(address):
            counters["auth_throttled"] += 1
            raise RelayError(ErrorKind.RATE_LIMITED, f"too many bad tokens from {address}: retry in {wait:.0f} s")

    def wait(self, address: str | None) -> float:
        """Seconds this address must wait before it may try again; 0 when it may now."""
        recent = self._recent(address)
        if not self.failures or recent is None or len(recent) < self.failures:
            return 0.0
        return max(0.0, recent[0] + self.window - time.monotonic())

    def failed(self, address: str | None) -> None:
        if not self.failures or address is None:
            return
        recent = self._recent(address)
        if recent is None:
            recent = self._seen[address] = deque(maxlen=self.failures)
            while len(self._seen) > MAX_ADDRESSES:
                self._seen.popitem(last=False)
        recent.append(time.monotonic())

    def _recent(self, address: str | None) -> deque[float] | None:
        if address is None or (recent := self._seen.get(address)) is None:
            return None
        while recent and recent[0] + self.window < time.monotonic():
            recent.popleft()
        self._seen.move_to_end(address)
        return recent
