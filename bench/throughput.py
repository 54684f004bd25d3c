"""2 manager throughput: relayed app-server round trips per second through the manager, with simulated
nodes that answer at once, against a bare aiohttp relay (bench/bare_relay.py) in the same run.

Rounds alternate between the two servers, so drift on a noisy machine hits both alike.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import psutil

from bench import bare_relay, stacks
from bench.figures import Figure, median
from bench.simnodes import SimFleet
from harness.stack import paths
from runtime.protocol import Api

NAME = "throughput"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=4, help="simulated nodes the load is spread over")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds per server, alternating")


def _busy() -> float:
    """CPU seconds the whole machine spent not idle, summed over its cores."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


async def _load(port: int, token: str, nodes: list[str], a: argparse.Namespace) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.load", "--port", str(port), "--nodes", ",".join(nodes),
        "--concurrency", str(a.concurrency), "--seconds", str(a.seconds), stdout=asyncio.subprocess.PIPE,
        cwd=paths.REPO_ROOT, env={**os.environ, "RELAY_CONTROL_TOKEN": token})  # never argv (H-10)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), a.seconds + 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return dict(json.loads(out))


async def run(a: argparse.Namespace) -> list[Figure]:
    async with stacks.stack(NAME) as s:
        token = (await s.call(Api.TOKENS, {"note": "bench throughput"}))["token"]
        bare_port = await bare_relay.start(s)
        targets = {"manager": (s.manager_port, "mgr"), "bare": (bare_port, "bare")}
        fleets = {name: SimFleet(f"ws://127.0.0.1:{port}{Api.NODE_WS}", token, a.nodes, a.nodes, prefix,
                                 str(s.root / "logs")) for name, (port, prefix) in targets.items()}
        rps: dict[str, list[float]] = {"manager": [], "bare": []}
        errors = 0
        try:
            for fleet in fleets.values():
                await fleet.start(timeout=60)
            for r in range(a.rounds):
                for name in (("bare", "manager") if r % 2 == 0 else ("manager", "bare")):
                    port, prefix = targets[name]
                    server = psutil.Process(s.procs["manager" if name == "manager" else "bare_relay"].pid)
                    cpu0, busy0, t0 = sum(server.cpu_times()[:2]), _busy(), time.monotonic()
                    out = await _load(port, s.control_token, [f"{prefix}-{i:05d}" for i in range(a.nodes)], a)
                    wall = time.monotonic() - t0
                    rps[name].append(out["rps"])
                    errors += int(out["errors"])
                    # Where the CPU went: the server's own share, and the whole machine's (2 cores = 200%).
                    print(f"  round {r + 1} {name:7s} {out['rps']:7.0f} rt/s  p50={out['p50_ms']:.2f}ms "
                          f"p95={out['p95_ms']:.2f}ms errors={out['errors']}  server cpu="
                          f"{100 * (sum(server.cpu_times()[:2]) - cpu0) / wall:.0f}% machine busy="
                          f"{100 * (_busy() - busy0) / wall:.0f}% of {100 * (psutil.cpu_count() or 1)}%", flush=True)
        finally:
            for fleet in fleets.values():
                await fleet.stop()
    mgr, base = median(rps["manager"]), median(rps["bare"])
    baseline = (f"bare aiohttp relay {base:.0f} rt/s (median of {a.rounds} x {a.seconds:g}s, concurrency "
                f"{a.concurrency}, {a.nodes} simulated nodes, errors {errors})")
    return [Figure("throughput.manager_rps", mgr, "rt/s", baseline, ">= 3000 rt/s", mgr >= 3000 and errors == 0),
            Figure("throughput.ratio_to_bare", 100 * mgr / base, "%", baseline, ">= 60%", mgr / base >= 0.6)]


if __name__ == "__main__":
    from bench.cli import main

    main([NAME, *sys.argv[1:]])
