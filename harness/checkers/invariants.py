"""The invariants gate A checks after every case run: no crash, no deadlock, no state pollution.

Each returns the list of violations it found, in words that name what is wrong.
"""
from __future__ import annotations

import time

import aiohttp

from harness.stack.stack import Stack
from runtime.backoff import Backoff
from runtime.protocol import Api

# The words a broken invariant fails with; the report files such failures under their own category.
INVARIANT_BROKEN = "broke a gate A invariant"


def crashed(stack: Stack) -> list[str]:
    """A process that is down without the harness having stopped it has crashed."""
    return [f"{p.name} exited with code {p.returncode} (log: {p.log_path})"
            for p in stack.procs.values() if not p.alive and not p.stopped_by_harness]


async def deadlocked(stack: Stack, health_timeout: float, roundtrip_timeout: float) -> list[str]:
    """The manager answers /healthz, and every live real node answers a relayed thread/list, in time."""
    problems = []
    try:
        status, _ = await stack.request("GET", Api.HEALTHZ, timeout=health_timeout, record=False)
        if status != 200:
            problems.append(f"manager /healthz answered {status}")
    except (TimeoutError, aiohttp.ClientError) as exc:
        return [f"manager /healthz did not answer within {health_timeout}s: {exc!r}"]
    online = (await stack.call(Api.SERVERS, record=False))["online"]
    for node_id in [n for n in online if n in stack.procs and stack.procs[n].alive]:
        if (problem := await _round_trip(stack, node_id, roundtrip_timeout)) is not None:
            problems.append(problem)
    return problems


async def _round_trip(stack: Stack, node_id: str, timeout: float) -> str | None:
    """A relayed thread/list within `timeout`; a node that is reconnecting may be asked again, not a stuck one."""
    deadline = time.monotonic() + timeout
    result: dict[str, object] = {}
    async for _ in Backoff(0.2, factor=1).tries(timeout):
        result = await stack.result(Api.APPSERVER, {"node_id": node_id, "method": "thread/list", "params": {},
                                                    "timeout": max(deadline - time.monotonic(), 0.1)}, record=False)
        if result["ok"]:
            return None
        if result.get("error_kind") != "node_offline":
            break
    return f"node {node_id} round trip failed: {result.get('error_kind')}: {result.get('error')}"


async def polluted(stack: Stack, settle_timeout: float) -> list[str]:
    """No task left open, no approval left pending, and the DB's online set equal to the live sockets."""
    problems: list[str] = []
    async for _ in Backoff(0.1, factor=1).tries(settle_timeout):
        problems = []
        open_tasks = (await stack.call(Api.TASKS, record=False))["open"]
        if open_tasks:
            problems.append(f"{len(open_tasks)} task(s) stuck in a non-final state: "
                            + ", ".join(f"{t['task_id']}={t['state']}" for t in open_tasks[:5]))
        pending = (await stack.call(Api.APPROVALS, {"state": "pending"}, record=False))["approvals"]
        if pending:
            problems.append(f"{len(pending)} approval(s) left pending: "
                            + ", ".join(a["approval_id"] for a in pending[:5]))
        servers = await stack.call(Api.SERVERS, record=False)
        stored = sorted(s["node_id"] for s in servers["servers"] if s["stored_online"])
        if stored != sorted(servers["online"]):
            problems.append(f"online set {sorted(servers['online'])} differs from the stored one {stored}")
        if not problems:
            break
    return problems
