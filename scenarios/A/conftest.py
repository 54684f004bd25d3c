"""Fixtures of stage A: scripted peers that drive one real process."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from harness.ends.peers import ScriptedNode
from harness.stack.stack import Stack
from runtime.protocol import new_id


@pytest.fixture
async def peer(stack: Stack) -> AsyncIterator[Callable[..., ScriptedNode]]:
    """Makes scripted nodes on the module's manager (a fresh node_id unless one is given); closed after the case."""
    made: list[ScriptedNode] = []

    def make(node_id: str | None = None) -> ScriptedNode:
        made.append(ScriptedNode(stack.manager_url, node_id or new_id("a1")))
        stack.note(made[-1].node_id)
        return made[-1]
    yield make
    for p in made:
        await p.close()
