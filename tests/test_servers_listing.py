"""GET /api/servers against a real manager: paging, the online filter, bad input, and a restart.

Listings come from the manager's in-memory mirror of the nodes table (runtime/manager/nodeview.py),
so these tests check the mirror against what the DB must say, including after a SIGKILL and restart,
when the mirror is rebuilt from the DB file alone.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.ends.peers import ScriptedNode
from harness.stack.stack import Stack
from runtime.protocol import Api, Msg

IDS = [f"srv-{i}" for i in range(5)]


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[Stack, dict[str, ScriptedNode]]]:
    s = Stack(tmp_path / "stack")
    peers: dict[str, ScriptedNode] = {}
    try:
        await s.start()
        for node_id in reversed(IDS):  # registered out of order: listings must still come sorted
            token = (await s.call(Api.TOKENS, {"node_id": node_id}))["token"]
            peers[node_id] = await ScriptedNode(s.manager_url, node_id).connect()
            assert (await peers[node_id].register(token))["type"] == Msg.REGISTER_OK
        yield s, peers
    finally:
        for p in peers.values():
            await p.close()
        await s.close()


async def _ids(s: Stack, query: dict[str, str]) -> tuple[list[str], str | None]:
    result = await s.call(Api.SERVERS, query)
    return [n["node_id"] for n in result["servers"]], result["next_after"]


async def test_pages_cover_the_fleet_once_in_order(fleet: tuple[Stack, dict[str, ScriptedNode]]) -> None:
    s, _ = fleet
    seen, after, pages = [], "", 0
    while after is not None and pages < 10:
        ids, after = await _ids(s, {"limit": "2", "after": after})
        seen += ids
        pages += 1
    assert seen == IDS
    assert pages == 3  # 2 + 2 + 1: a short page is the last
    everything, next_after = await _ids(s, {})
    assert everything == IDS and next_after is None


async def test_online_filter_follows_a_disconnect(fleet: tuple[Stack, dict[str, ScriptedNode]]) -> None:
    s, peers = fleet
    await peers["srv-2"].close()
    await s.wait_online("srv-2", online=False, timeout=10)
    # The live set drops the socket first; the stored state (what the filter reads) follows once its write commits.
    for _ in range(100):
        if (offline := (await _ids(s, {"online": "false"}))[0]):
            break
        await asyncio.sleep(0.05)
    assert offline == ["srv-2"]
    assert (await _ids(s, {"online": "true"}))[0] == [i for i in IDS if i != "srv-2"]
    gone = next(n for n in (await s.call(Api.SERVERS))["servers"] if n["node_id"] == "srv-2")
    assert gone["online"] is False and gone["stored_online"] is False


@pytest.mark.parametrize(("query", "named"), [({"limit": "0"}, "`limit`"), ({"limit": "ten"}, "`limit`"),
                                               ({"online": "maybe"}, "`online`")])
async def test_bad_query_is_refused_by_name(fleet: tuple[Stack, dict[str, ScriptedNode]], query: dict[str, str],
                                            named: str) -> None:
    s, _ = fleet
    status, env = await s.request("GET", Api.SERVERS, query)
    assert status == 400 and env["ok"] is False and env["error_kind"] == "invalid_request"
    assert named in env["error"], env


async def test_restart_rebuilds_the_listing_from_the_db(fleet: tuple[Stack, dict[str, ScriptedNode]]) -> None:
    s, _ = fleet
    before = {n["node_id"]: n for n in (await s.call(Api.SERVERS))["servers"]}
    await s.restart_manager()  # SIGKILL: nothing in memory survives, the DB file does
    after = {n["node_id"]: n for n in (await s.call(Api.SERVERS))["servers"]}
    assert sorted(after) == IDS
    assert all(after[i]["first_seen"] == before[i]["first_seen"] for i in IDS)
    # The scripted peers do not reconnect: after a restart every one of them is offline, stored and live.
    assert not any(n["online"] or n["stored_online"] for n in after.values())
