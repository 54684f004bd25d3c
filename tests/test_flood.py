"""The bot's per-user rate limit (runtime/bot/flood.py): the first refusal of a flood is told, the rest are quiet,
each user is counted apart, and a user is served again once the window has passed."""
from __future__ import annotations

import time

from runtime.bot.flood import Flood, Refusal

WINDOW = 0.3


def test_one_notice_per_flood_and_served_again() -> None:
    flood = Flood(3, WINDOW)
    assert [flood.admit(7) for _ in range(3)] == [None, None, None]
    first = flood.admit(7)
    assert first is not None and first.tell and first.wait == 1  # whole seconds, rounded up
    assert flood.admit(7) == Refusal(1, tell=False)
    assert flood.admit(8) is None  # another user is not held up
    time.sleep(WINDOW + 0.05)
    assert flood.admit(7) is None
    assert [flood.admit(7) for _ in range(2)] == [None, None]
    again = flood.admit(7)
    assert again is not None and again.tell  # a new flood is told again


def test_zero_turns_it_off() -> None:
    flood = Flood(0, WINDOW)
    assert all(flood.admit(7) is None for _ in range(1000))
