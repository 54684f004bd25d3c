"""S-05 (the manager's half): an address that keeps presenting bad tokens is made to wait, on the control API and
on the node socket alike, and the wait is named."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.ends.peers import ScriptedNode
from harness.stack.stack import Stack
from runtime.protocol import Api, Msg

LIMIT = 5


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(tmp_path / "stack", {"auth-failures": LIMIT, "auth-window": 60})
    try:
        await s.start()
        yield s
    finally:
        await s.close()


async def test_bad_tokens_are_slowed(stack: Stack) -> None:
    """past auth_failures bad tokens, every call from that address gets 429 rate_limited until the window passes"""
    assert (await stack.call(Api.TOKENS, {}))["token"]  # the right token works before any guessing
    for _ in range(LIMIT):
        status, env = await stack.request("GET", Api.USERS, token="wrong")
        assert (status, env["error_kind"]) == (401, "unauthorized"), env
    status, env = await stack.request("GET", Api.USERS)  # now even the right one waits: no oracle for guesses
    assert (status, env["error_kind"], env["retriable"]) == (429, "rate_limited", True), env
    assert "retry in" in env["error"], env
    node = await ScriptedNode(stack.manager_url, "guesser").connect()
    try:
        refused = await node.register("crt_wrong")
        assert refused["type"] == Msg.REGISTER_ERROR and refused["error_kind"] == "rate_limited", refused
    finally:
        await node.close()
    assert await stack.metric("auth_throttled") >= 2
