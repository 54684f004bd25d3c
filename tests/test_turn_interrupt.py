"""A turn cut short while the next turn on its thread waits behind it: the next one gets its own outcome.

The torture soak (R-06) found the node taking the interrupted turn's `turn/completed` for the next turn's, which
then failed as "the turn failed without a message" although codex ran it. Here the first turn is cut short by the
manager's timeout; the node must interrupt it and see it end before the thread's next turn starts."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.stack.stack import Stack
from runtime.protocol import Api, new_id


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(tmp_path / "stack")
    try:
        await s.start()
        await s.add_node("t1")
        yield s
    finally:
        await s.close()


async def test_the_next_turn_on_a_thread_keeps_its_own_outcome(stack: Stack) -> None:
    chat = new_id("chat")

    async def turn(text: str, timeout: float) -> dict[str, object]:
        # steer false: the next message queues behind the running turn (P1-02's /queue on) instead of joining it
        return await stack.result(Api.DISPATCH_TEXT, {"chat_key": chat, "node_id": "t1", "text": text,
                                                      "timeout": timeout, "steer": False})

    assert (await turn("the thread's first turn", 20))["ok"]
    for i in range(2):
        cut = asyncio.create_task(turn(f"cut short {i} [[mock:slow=10]]", 2))
        await stack.wait_served(f"cut short {i}")
        queued = asyncio.create_task(turn(f"queued behind it {i}", 20))  # waits for the thread
        assert (await cut)["error_kind"] == "timeout"
        after = await queued
        assert after["ok"] and after["text"] == f"mock reply: queued behind it {i}", after
