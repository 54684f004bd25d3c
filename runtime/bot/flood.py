"""S-05, the bot's half: a user who sends more than `user_rate_limit` updates in `user_rate_window` seconds is
skipped until the window frees a slot, and told so once, with the wait, instead of once per message."""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from runtime.window import MAX_KEYS, SlidingWindow


@dataclass(frozen=True)
class Refusal:
    wait: int      # whole seconds until the user is served again
    tell: bool     # the first refusal of a flood says so; the rest of it are skipped quietly


class Flood:
    def __init__(self, limit: int, window: float) -> None:
        self._served = SlidingWindow(limit, window)  # only served updates count, so a flood ends when its window does
        self._told_until: OrderedDict[int, float] = OrderedDict()

    def admit(self, user_id: int) -> Refusal | None:
        """None: serve this update (it is counted). Otherwise it is refused."""
        wait = self._served.wait(user_id)
        if not wait:
            self._served.add(user_id)
            return None
        now = time.monotonic()
        tell = self._told_until.get(user_id, 0.0) <= now
        if tell:
            self._told_until[user_id] = now + wait
            self._told_until.move_to_end(user_id)
            while len(self._told_until) > MAX_KEYS:
                self._told_until.popitem(last=False)
        return Refusal(math.ceil(wait), tell)
