"""Large app-server calls queued for one node, so a node that stops reading fills the manager's send queue and
the socket buffers on the way (H-01), instead of a few heartbeats that would fit in any buffer."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import aiohttp

from runtime.protocol import Api

if TYPE_CHECKING:
    from harness.stack.stack import Stack

# thread/list ignores a parameter it does not know; the padding only makes the frame big.
METHOD = "thread/list"


@asynccontextmanager
async def queued(stack: Stack, node: str, calls: int, payload_kb: int, timeout_s: float) -> AsyncIterator[list[int]]:
    """`calls` app-server calls of `payload_kb` KB each, in flight to `node` for the scope; yields the HTTP
    statuses as they come. None of them is a load op: they are not in the history, only the fault's weight."""
    statuses: list[int] = []
    pad = "x" * (payload_kb * 1024)

    async def one(i: int) -> None:
        body = {"node_id": node, "method": METHOD, "params": {"limit": 1, "pad": f"{i}{pad}"}, "timeout": timeout_s}
        try:
            status, _ = await stack.request("POST", Api.APPSERVER, body, timeout=timeout_s + 5, record=False)
            statuses.append(status)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            statuses.append(0)

    tasks = [asyncio.create_task(one(i)) for i in range(calls)]
    try:
        yield statuses
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
