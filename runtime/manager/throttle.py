"""Slows down guessing: an address that keeps presenting bad credentials is refused for a while, unasked.

Counted per remote address over a sliding window (runtime/window.py); past the limit every call from that address
gets 429 `rate_limited` with the seconds to wait, before any token is looked at.
"""
from __future__ import annotations

import math
from collections import Counter

from runtime.protocol import ErrorKind, RelayError
from runtime.window import SlidingWindow


class AuthThrottle:
    def __init__(self, failures: int, window: float) -> None:
        self._failures = SlidingWindow(failures, window)  # bad credentials per address; 0 turns throttling off

    def check(self, address: str | None, counters: Counter[str]) -> None:
        """Refuse an address that must still wait, before its credentials are looked at."""
        if address is not None and (wait := self._failures.wait(address)):
            counters["auth_throttled"] += 1
            raise RelayError(ErrorKind.RATE_LIMITED, f"too many bad tokens from {address}: retry in {math.ceil(wait)} s")

    def failed(self, address: str | None) -> None:
        if address is not None:
            self._failures.add(address)
