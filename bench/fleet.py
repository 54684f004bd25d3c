"""3 fleet size: simulated nodes (the real node's link code, no Codex) connected and heartbeating against
one manager, held for a while: spurious offline, manager RSS, and /api/servers latency while held.

The baseline is the same manager, measured idle before the fleet connects: its RSS and servers call.
Nodes heartbeat every 15 s; the manager's offline timeout is 45 s (three beats, as in the defaults).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

import aiohttp
import psutil

from bench import stacks
from bench.figures import Figure, ms, pct
from bench.simnodes import SimFleet, raise_fd_limit
from harness.stack.stack import Stack
from runtime.protocol import Api, Event

NAME = "fleet"
HEARTBEAT, OFFLINE = 15.0, 45.0
PAGE = "?online=true&limit=100"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--hold", type=float, default=600.0, help="seconds to hold the fleet")
    p.add_argument("--per-worker", type=int, default=2_500, help="simulated nodes per worker process")
    p.add_argument("--sample", type=float, default=2.0, help="seconds between servers calls and RSS samples")
    p.add_argument("--report", type=float, default=60.0, help="seconds between progress lines while held")
    p.add_argument("--ramp-timeout", type=float, default=600.0, help="give up if the fleet is not up by then")


async def _servers(s: Stack, http: aiohttp.ClientSession, query: str = "") -> tuple[float, int]:
    """One GET /api/servers, timed to its last byte (parsing 1.6 MB of JSON here is the client's cost)."""
    start = time.perf_counter()
    async with http.get(s.manager_url + Api.SERVERS + query) as resp:
        raw = await resp.read()
    took = time.perf_counter() - start
    env = json.loads(raw)
    assert env["ok"] and env["result"]["ok"], f"servers call failed: {str(env)[:300]}"
    return took, len(env["result"]["online"])


async def _gc_counters(s: Stack, http: aiohttp.ClientSession) -> dict[str, float]:
    """The manager's own GC counters (/metrics): a slow servers call is often a full collection."""
    async with http.get(s.manager_url + Api.METRICS) as resp:
        text = await resp.text()
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("relay_gc_")}


def _gc_held(before: dict[str, float], after: dict[str, float]) -> str:
    """Collections and their mean pause while the fleet was held, per generation."""
    def delta(name: str, g: int) -> float:
        key = f'relay_gc_{name}{{generation="{g}"}}'
        return after.get(key, float("nan")) - before.get(key, float("nan"))
    parts = []
    for g in range(3):
        n, total = delta("collections_total", g), delta("pause_seconds_total", g)
        parts.append(f"gen{g}: n={n:.0f} total={total:.2f}s mean={1000 * total / n if n else 0:.1f}ms")
    worst = after.get('relay_gc_pause_max_seconds{generation="2"}', 0.0)
    return " ".join(parts) + f"; longest full collection since start {1000 * worst:.0f}ms"


async def _count_offline(s: Stack, http: aiohttp.ClientSession, seen: list[str]) -> None:
    async with http.ws_connect(s.manager_url + Api.EVENTS, max_msg_size=0) as ws:
        async for frame in ws:
            if frame.type == aiohttp.WSMsgType.TEXT and json.loads(frame.data).get("type") == Event.NODE_OFFLINE:
                seen.append(json.loads(frame.data)["node_id"])


async def run(a: argparse.Namespace) -> list[Figure]:
    limit = raise_fd_limit()
    if limit < a.nodes + 1000:
        raise SystemExit(f"bench fleet: the open-files limit is {limit}, {a.nodes} nodes need more: "
                         f"raise the hard limit (ulimit -Hn) or pass a smaller --nodes")
    async with stacks.stack(NAME, **{"heartbeat-interval": HEARTBEAT, "offline-timeout": OFFLINE}) as s:
        manager = psutil.Process(s.procs["manager"].pid)
        headers = {"Authorization": f"Bearer {s.control_token}"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as http:
            idle = [(await _servers(s, http))[0] for _ in range(50)]
            idle_rss = manager.memory_info().rss
            token = (await s.call(Api.TOKENS, {"note": "bench fleet"}))["token"]
            fleet = SimFleet(f"ws://127.0.0.1:{s.manager_port}{Api.NODE_WS}", token, a.nodes, a.per_worker, "fleet",
                             str(s.root / "logs"), heartbeat=HEARTBEAT, silence=OFFLINE)
            offline: list[str] = []
            watcher: asyncio.Task[None] | None = None
            try:
                started = time.monotonic()
                up = await fleet.start(timeout=a.ramp_timeout)
                ramp = time.monotonic() - started
                print(f"  fleet up: {up['registered']}/{a.nodes} registered in {ramp:.1f}s", flush=True)
                before = await fleet.stats()
                gc_before = await _gc_counters(s, http)
                watcher = asyncio.create_task(_count_offline(s, http, offline))
                lat: list[float] = []
                page: list[float] = []  # what a paging client pays: the first 100 online nodes
                online_min, rss_max = a.nodes, 0
                end = time.monotonic() + a.hold
                next_report = time.monotonic() + a.report
                while time.monotonic() < end:
                    tick = time.monotonic()
                    took, online = await _servers(s, http)
                    lat.append(took)
                    page.append((await _servers(s, http, PAGE))[0])
                    online_min = min(online_min, online)
                    rss_max = max(rss_max, manager.memory_info().rss)
                    if tick >= next_report:
                        next_report += a.report
                        print(f"  held {tick - end + a.hold:4.0f}s: online={online} rss={rss_max / 2**20:.0f}MB "
                              f"servers last={ms(took)} p95={ms(pct(lat, 95))} offline_events={len(offline)}", flush=True)
                    await asyncio.sleep(max(0.0, a.sample - (time.monotonic() - tick)))
                after = await fleet.stats()
                gc_line = _gc_held(gc_before, await _gc_counters(s, http))
            finally:
                if watcher is not None:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                        await watcher
                await fleet.stop()
    losses = after["link_losses"] - before["link_losses"]
    spurious = len(offline) + losses
    print(f"  held {a.hold:g}s: min online={online_min}/{a.nodes}, node_offline events={len(offline)}, "
          f"node-side link losses={losses}, servers calls={len(lat)}", flush=True)
    print(f"  manager GC while held: {gc_line}", flush=True)
    held = online_min if spurious == 0 else online_min - spurious
    base_fleet = (f"{a.nodes} nodes, heartbeat {HEARTBEAT:g}s, held {a.hold:g}s after a {ramp:.0f}s ramp; "
                  f"node_offline events {len(offline)}, node link losses {losses}")
    return [
        Figure("fleet.nodes_held", held, " nodes", base_fleet, ">= 10000 with 0 spurious offline",
               held >= 10_000 and spurious == 0),
        Figure("fleet.spurious_offline", spurious, "", base_fleet, "0", spurious == 0),
        Figure("fleet.manager_rss", rss_max / 2**20, "MB", f"idle manager before the fleet: {idle_rss / 2**20:.0f}MB",
               "<= 600 MB", rss_max <= 600 * 2**20),
        Figure("fleet.servers_page_p95", 1000 * pct(page, 95), "ms",
               f"GET /api/servers{PAGE}, same samples; full listing p95={ms(pct(lat, 95))}", "none (context)"),
        Figure("fleet.servers_p95", 1000 * pct(lat, 95), "ms",
               f"idle manager (0 nodes) p95={ms(pct(idle, 95))}; held p50={ms(pct(lat, 50))}, n={len(lat)}",
               "<= 100 ms", pct(lat, 95) <= 0.1),
    ]


if __name__ == "__main__":
    from bench.cli import main

    main([NAME, *sys.argv[1:]])
