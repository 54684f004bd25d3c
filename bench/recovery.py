"""4 recovery time (RTO) after a manager crash: SIGKILL the manager with N nodes online, restart it on
the same DB, and time until all N are online again, from the manager's own `manager_ready` log line.

The nodes are simulated with the real node's link code (its backoff 0.5 s x 1.7 up to 10 s, with
jitter), so the time includes the wait for each node's next reconnect attempt. The baseline is the same
N nodes registering against a manager that is already up, measured at the start of the run.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

from bench import stacks
from bench.figures import Figure, median, pct
from bench.simnodes import SimFleet
from harness.stack.procs import Proc
from harness.stack.stack import Stack
from runtime.backoff import Backoff
from runtime.protocol import Api

NAME = "recovery"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--timeout", type=float, default=60.0, help="give up on a trial after this many seconds")


async def _all_online(s: Stack, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len((await s.call(Api.SERVERS, record=False))["online"]) >= n:
                return
        except (OSError, AssertionError, TimeoutError):
            pass
        await asyncio.sleep(0.02)
    raise TimeoutError(f"not all {n} nodes online within {timeout}s")


async def _registrations(manager: Proc, offset: int, n: int) -> list[tuple[float, str]]:
    """The `node_registered` lines since `offset`: a session is listed online a moment before its line."""
    found: list[tuple[float, str]] = []
    async for _ in Backoff(0.05, factor=1).tries(10):
        if len(found := stacks.log_events(manager, "node_registered", offset)) >= n:
            break
    return found


async def run(a: argparse.Namespace) -> list[Figure]:
    rto, restart = [], []
    async with stacks.stack(NAME) as s:
        manager = s.procs["manager"]
        token = (await s.call(Api.TOKENS, {"note": "bench recovery"}))["token"]
        fleet = SimFleet(f"ws://127.0.0.1:{s.manager_port}{Api.NODE_WS}", token, a.nodes, a.nodes, "rto",
                         str(s.root / "logs"), inflight=a.nodes)
        try:
            cold = (await fleet.start(timeout=a.timeout))["seconds"]
            for trial in range(1, a.trials + 1):
                await _all_online(s, a.nodes, a.timeout)
                await asyncio.sleep(1.0)  # steady state: every link registered, its backoff reset
                offset = stacks.log_size(manager)
                killed = time.time()
                manager.kill()
                await s.start_manager()
                await _all_online(s, a.nodes, a.timeout)
                ready = stacks.log_events(manager, "manager_ready", offset)[-1][0]
                registered = await _registrations(manager, offset, a.nodes)
                last = max(t for t, _ in registered)
                rto.append(last - ready)
                restart.append(ready - killed)
                print(f"  trial {trial}: kill->ready {ready - killed:.2f}s, ready->all {a.nodes} online "
                      f"{last - ready:.2f}s ({len(registered)} registrations)", flush=True)
        finally:
            await fleet.stop()
    base = (f"same {a.nodes} nodes registering on a manager already up: {cold:.2f}s; kill->ready median "
            f"{median(restart):.2f}s; ready->all online median {median(rto):.2f}s, max {max(rto):.2f}s, "
            f"{a.trials} trials")
    return [Figure("recovery.rto_p95", pct(rto, 95), "s", base, "<= 2 s after the manager is ready",
                   pct(rto, 95) <= 2.0)]


if __name__ == "__main__":
    from bench.cli import main

    main([NAME, *sys.argv[1:]])
