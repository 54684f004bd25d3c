"""The bot's /node listing stays within Telegram's limits however large the fleet is."""
from __future__ import annotations

from runtime.bot import render


def _fleet(n: int) -> list[dict[str, object]]:
    return [{"node_id": f"n{i:05d}", "online": i % 3 == 0, "last_seen": 1_000_000.0 + i} for i in range(n)]


def test_a_large_fleet_lists_selected_then_online_and_counts_the_rest() -> None:
    text, markup = render.nodes(_fleet(10_000), "n00001")
    assert markup is not None and len(markup.inline_keyboard) == render.MAX_LISTED
    assert len(text) < 4096
    listed = [line.split(":")[0].lstrip("• ") for line in text.splitlines()[1:render.MAX_LISTED + 1]]
    assert listed[0] == "n00001"  # selected, although offline
    assert listed[1:] == [f"n{i:05d}" for i in range(0, 3 * (render.MAX_LISTED - 1), 3)]  # online, in order
    assert "…and 9980 more (10000 nodes, 3334 online)" in text


def test_a_small_fleet_is_listed_whole() -> None:
    text, markup = render.nodes(_fleet(4), None)
    assert markup is not None and len(markup.inline_keyboard) == 4
    assert "more" not in text
    # Offline nodes come after online ones, the most recently seen first.
    assert [ln.split(":")[0].lstrip("• ") for ln in text.splitlines()[1:]] == ["n00000", "n00003", "n00002", "n00001"]
