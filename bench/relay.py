"""1 relay overhead: app-server `thread/list` through control API -> manager -> node -> codex and back,
against the same call made straight over a codex child's stdio, in one run, at concurrency 1.

The direct client is the node's own AppServer class on a second codex child with an identical
CODEX_HOME. A third path measures the floor of any such relay on this machine: the bare aiohttp relay
(bench/bare_relay.py) to a simulated node that answers at once, so no manager logic and no Codex.
Batches of the three alternate, so a noisy neighbour hits all alike. The node talks to the manager
directly: Toxiproxy is test plumbing, not part of what a user runs.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import bare_relay, stacks
from bench.figures import Figure, ms, pct
from bench.load import OK_PREFIX, HttpClient
from bench.simnodes import SimFleet
from harness.stack import paths
from runtime.node.appserver import AppServer
from runtime.node.config import NodeConfig
from runtime.protocol import Api, ErrorKind, RelayError

NAME = "relay"
NODE = "bench-relay"
Call = Callable[[], Awaitable[None]]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calls", type=int, default=500, help="measured calls per path (the issue asks >= 500)")
    p.add_argument("--batch", type=int, default=50, help="calls per batch; batches of the paths alternate")
    p.add_argument("--warmup", type=int, default=50, help="unmeasured calls per path first")
    p.add_argument("--gap", type=float, default=0.0,
                   help="seconds to idle between calls (0: back to back, as the issue asks)")


async def _timed(call: Call, n: int, gap: float, into: list[float] | None) -> None:
    for _ in range(n):
        start = time.perf_counter()
        await call()
        if into is not None:
            into.append(time.perf_counter() - start)
        if gap:
            await asyncio.sleep(gap)


def _relay_call(http: HttpClient, node_id: str) -> Call:
    raw = http.request(Api.APPSERVER, {"node_id": node_id, "method": "thread/list", "params": {}})

    async def call() -> None:
        ok, body = await http.send(raw)
        assert ok and body.startswith(OK_PREFIX), f"relayed thread/list failed: {body[:300]!r}"
    return call


async def _no_request(method: str, params: dict[str, Any], request_id: Any) -> dict[str, Any]:
    raise RelayError(ErrorKind.APPSERVER_ERROR, "the benchmark answers no server requests")


async def run(a: argparse.Namespace) -> list[Figure]:
    async with stacks.stack(NAME) as s:
        # The node as it runs for real: the harness's traffic log off (production's default).
        await s.add_node(NODE, manager_url=f"ws://127.0.0.1:{s.manager_port}{Api.NODE_WS}", appserver_log="",
                         heartbeat_interval=NodeConfig.heartbeat_interval, manager_silence=NodeConfig.manager_silence)
        home, cwd = s.root / "direct" / "codex_home", s.root / "direct" / "cwd"
        home.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        shutil.copy(s.root / "nodes" / NODE / "codex_home" / "config.toml", home / "config.toml")
        direct = AppServer(NodeConfig(node_id="bench-direct", token="-", cwd=str(cwd), codex_bin=str(paths.codex_bin()),
                                      codex_home=str(home)), lambda m, p: None, _no_request, "bench")
        direct.start()
        bare_port = await bare_relay.start(s)
        floor_node = SimFleet(f"ws://127.0.0.1:{bare_port}{Api.NODE_WS}", "-", 1, 1, "floor", str(s.root / "logs"))
        clients = [HttpClient(s.manager_port, s.control_token), HttpClient(bare_port, "")]
        try:
            await asyncio.wait_for(direct.ready.wait(), 60)
            await floor_node.start(timeout=60)

            async def straight() -> None:
                await direct.request("thread/list", {}, 10)

            paths_ = {"direct": straight, "relayed": _relay_call(clients[0], NODE),
                      "floor": _relay_call(clients[1], "floor-00000")}
            for call in paths_.values():
                await _timed(call, a.warmup, a.gap, None)
            times: dict[str, list[float]] = {name: [] for name in paths_}
            done = 0
            while done < a.calls:
                n = min(a.batch, a.calls - done)
                for name, call in paths_.items():
                    await _timed(call, n, a.gap, times[name])
                done += n
        finally:
            for http in clients:
                await http.close()
            await floor_node.stop()
            await direct.close()
    p = {name: (pct(t, 50), pct(t, 95)) for name, t in times.items()}
    for name, (p50, p95) in p.items():
        print(f"  {name:8s} p50={ms(p50)} p95={ms(p95)} n={len(times[name])}", flush=True)
    (d50, d95), (r50, r95), (f50, f95) = p["direct"], p["relayed"], p["floor"]
    base = (f"codex stdio direct p50={ms(d50)} p95={ms(d95)}; relayed p50={ms(r50)} p95={ms(r95)}; "
            f"floor (bare relay, instant peer) p50={ms(f50)} p95={ms(f95)}; n={a.calls} each, gap={a.gap:g}s")
    return [Figure("relay.added_p50", 1000 * (r50 - d50), "ms", base, "<= 1 ms", r50 - d50 <= 0.001),
            Figure("relay.added_p95", 1000 * (r95 - d95), "ms", base, "<= 3 ms", r95 - d95 <= 0.003)]


if __name__ == "__main__":
    from bench.cli import main

    main([NAME, *sys.argv[1:]])
