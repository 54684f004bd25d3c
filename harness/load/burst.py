"""Bursts: Locust, always in its own processes, against a live stack's control API.

Headless, it runs for the profile's time and the gate's burst thresholds judge Locust's own figures
(its JSON; response-time histograms merged across endpoints for percentiles), while the exactly-once
checker judges the turns the users recorded. `--web` leaves Locust's UI on 127.0.0.1, ready to swarm;
`--workers N` runs a master and N local workers, the way a burst outgrows one machine.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from harness.checkers import checkers
from harness.checkers.checkers import ExactlyOnce
from harness.gates import gates
from harness.history import evidence, history
from harness.load.steady import ANSWER_GRACE_S, Client
from harness.stack import paths, ports
from harness.stack.stack import Stack

LOCUSTFILE = paths.REPO_ROOT / "harness" / "load" / "locustfile.py"
START_GRACE_S = 60.0  # Locust's own start-up and the users' last answers, past the run time


@dataclass(frozen=True)
class BurstSettings:
    nodes: list[str]
    users: int
    spawn_rate: float
    duration_s: float
    op_timeout_s: float
    workers: int = 0

    @classmethod
    def from_gates(cls, g: gates.Gates, users: int | None = None, duration_s: float | None = None,
                   workers: int = 0) -> BurstSettings:
        return cls([f"n{i}" for i in range(1, int(g.setting("gates.D.nodes")) + 1)],
                   users or int(g.setting("gates.D.burst.users")), float(g.setting("gates.D.burst.spawn_rate")),
                   duration_s or float(g.setting("gates.D.burst.duration_s")),
                   float(g.setting("gates.D.soak.op_timeout_s")), workers)


@dataclass
class LocustStats:
    requests: int
    failures: int
    histogram: dict[int, int]  # response time (ms, Locust's rounding) -> count, all endpoints merged
    by_name: dict[str, tuple[int, int]]

    def percentile(self, q: float) -> float | None:
        total = sum(self.histogram.values())
        if not total:
            return None
        rank, seen = q / 100 * total, 0
        for ms, n in sorted(self.histogram.items()):
            seen += n
            if seen >= rank:
                return float(ms)
        return float(max(self.histogram))


def read_stats(path: Path) -> LocustStats:
    """Locust's JSON: one entry per endpoint with a response-time histogram and no percentiles."""
    entries = json.loads(path.read_text())
    hist: dict[int, int] = {}
    by_name = {}
    for e in entries:
        by_name[f"{e['method']} {e['name']}"] = (e["num_requests"], e["num_failures"])
        for ms, n in e["response_times"].items():
            hist[int(float(ms))] = hist.get(int(float(ms)), 0) + int(n)
    return LocustStats(sum(r for r, _ in by_name.values()), sum(f for _, f in by_name.values()), hist, by_name)


@dataclass
class BurstRun:
    settings: BurstSettings
    stats: LocustStats
    exactly_once: ExactlyOnce
    out_dir: Path
    exit_code: int

    def metric(self, name: str, q: float | None = None, per_hour: str = "") -> tuple[float | None, str]:
        s = self.stats
        if name == "p":
            assert q is not None
            return s.percentile(q), f"over {s.requests} requests (Locust, all endpoints)"
        if name in ("rate", "rate_all"):
            return ((s.requests - s.failures) / s.requests if s.requests else None), \
                f"{s.requests - s.failures}/{s.requests} requests ok"
        eo = self.exactly_once
        value = {"duplicates": eo.duplicates + eo.unrecorded, "lost": eo.lost, "dropped": eo.dropped}[name]
        return float(value), f"over {eo.tasks} turns, {eo.acknowledged} acknowledged"

    def report(self) -> str:
        s, eo = self.stats, self.exactly_once
        p = {q: s.percentile(q) for q in (50, 95, 99)}
        lines = [f"burst: {self.settings.users} users on {len(self.settings.nodes)} nodes for {self.settings.duration_s:g}s"
                 + (f", {self.settings.workers} workers" if self.settings.workers else ""),
                 f"requests: {s.requests}, failures {s.failures}; P50 {p[50]} ms, P95 {p[95]} ms, P99 {p[99]} ms"]
        lines += [f"  {name}: {n} requests, {f} failures" for name, (n, f) in sorted(s.by_name.items())]
        lines.append(f"exactly-once: {eo.tasks} turns, {eo.acknowledged} acknowledged, {eo.final} final; duplicates "
                     f"{eo.duplicates}, unrecorded {eo.unrecorded}, lost {eo.lost}, dropped {eo.dropped}, "
                     f"inconsistent {eo.inconsistent}")
        lines += [f"  {e}" for e in eo.examples]
        return "\n".join(lines)


def locust_env(stack: Stack, settings: BurstSettings, out_dir: Path) -> dict[str, str]:
    return {**os.environ, "RELAY_CONTROL_TOKEN": stack.control_token, "RELAY_NODES": ",".join(settings.nodes),
            "RELAY_OP_TIMEOUT": str(settings.op_timeout_s), "RELAY_HISTORY_DIR": str(out_dir)}


def _argv(*extra: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *extra]


async def _spawn(argv: list[str], env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with await asyncio.to_thread(open, log, "ab") as fh:  # the child keeps its own copy of the descriptor
        return await asyncio.create_subprocess_exec(*argv, env=env, cwd=paths.REPO_ROOT, stdout=fh,
                                                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)


async def _stop(procs: list[asyncio.subprocess.Process], grace: float = 10.0) -> None:
    for p in procs:
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            await asyncio.wait_for(p.wait(), grace)
        except TimeoutError:
            p.kill()
            await p.wait()


async def run(stack: Stack, settings: BurstSettings, out_dir: Path) -> BurstRun:
    """A headless burst (optionally distributed), then the evidence and the exactly-once check."""
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    for node in settings.nodes:
        if node not in stack.procs:
            await stack.add_node(node)
    env = locust_env(stack, settings, out_dir)
    common = ["--headless", "-u", str(settings.users), "-r", str(settings.spawn_rate), "-t", f"{settings.duration_s:g}s",
              "--host", stack.manager_url, "--stop-timeout", str(int(settings.op_timeout_s + ANSWER_GRACE_S)),
              "--json-file", str(out_dir / "locust"), "--html", str(out_dir / "locust.html"), "--only-summary",
              "--exit-code-on-error", "0"]
    procs: list[asyncio.subprocess.Process] = []
    try:
        if settings.workers:
            # Port 0: the master binds a free port itself, and the workers are told the one it got.
            procs.append(await _spawn(_argv(*common, "--master", "--master-bind-host", "127.0.0.1",
                                            "--master-bind-port", "0", "--expect-workers", str(settings.workers)),
                                      env, out_dir / "locust-master.log"))
            port = await ports.listening(procs[0].pid, f"the Locust master (log: {out_dir / 'locust-master.log'})")
            for i in range(settings.workers):
                procs.append(await _spawn(_argv("--worker", "--master-host", "127.0.0.1", "--master-port", str(port)),
                                          env, out_dir / f"locust-worker{i + 1}.log"))
        else:
            procs.append(await _spawn(_argv(*common), env, out_dir / "locust.log"))
        limit = settings.duration_s + settings.op_timeout_s + ANSWER_GRACE_S + START_GRACE_S
        code = await asyncio.wait_for(procs[0].wait(), limit)
    finally:
        await _stop(procs)
    stats_file = out_dir / "locust.json"
    if not await asyncio.to_thread(stats_file.exists):
        raise RuntimeError(f"Locust wrote no {stats_file.name} (exit {code}); see {out_dir}/locust*.log")
    records = history.load(*sorted(await asyncio.to_thread(out_dir.glob, "history-*.jsonl")))
    ops, _, _ = history.split(records)
    async with aiohttp.ClientSession() as http:
        client = Client(http, stack.manager_url, stack.control_token)
        await evidence.settle(client, settings.op_timeout_s + ANSWER_GRACE_S + 30)
        ev = await evidence.gather(stack, client, ops)
    evidence.save(ev, out_dir / "evidence.json")
    result = BurstRun(settings, read_stats(stats_file), checkers.exactly_once(ops, ev), out_dir, code)
    (out_dir / "report.txt").write_text(result.report() + "\n")
    return result


def criteria(g: gates.Gates, result: BurstRun) -> list[gates.Criterion]:
    return gates.judge(g, "burst", gates.measure(g, "burst", result.metric))


# ---- `harness burst` ---------------------------------------------------------------------------

async def main(g: gates.Gates, settings: BurstSettings, run_dir: Path) -> int:
    stack = Stack(run_dir / "stack")
    started = time.monotonic()
    try:
        await stack.start()
        print(f"[burst] {settings.users} users, {settings.duration_s:g}s against {stack.manager_url}"
              + (f" with {settings.workers} local workers" if settings.workers else ""), flush=True)
        result = await run(stack, settings, run_dir)
    finally:
        await stack.close()
    verdict = gates.Verdict("D", False, criteria(g, result), 1, round(time.monotonic() - started, 1))
    verdict.passed = all(c.passed for c in verdict.criteria)
    (run_dir / "verdict.json").write_text(json.dumps(verdict.to_json(), indent=2))
    print(result.report())
    for c in verdict.criteria:
        print(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}")
    print(f"burst {'PASSED' if verdict.passed else 'FAILED'}; Locust report: {run_dir / 'locust.html'}")
    return 0 if verdict.passed else 1


async def web(g: gates.Gates, settings: BurstSettings, run_dir: Path, port: int, max_time_s: float) -> int:
    """A stack and Locust's web UI on 127.0.0.1, until Ctrl-C or max_time_s."""
    stack = Stack(run_dir / "stack")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    procs: list[asyncio.subprocess.Process] = []
    try:
        await stack.start()
        for node in settings.nodes:
            await stack.add_node(node)
        await asyncio.to_thread(run_dir.mkdir, parents=True, exist_ok=True)
        procs.append(await _spawn(_argv("--web-host", "127.0.0.1", "--web-port", str(port), "--host", stack.manager_url,
                                        "-u", str(settings.users), "-r", str(settings.spawn_rate)),
                                  locust_env(stack, settings, run_dir), run_dir / "locust.log"))
        print(f"[burst] Locust web UI: http://127.0.0.1:{port}/ against {stack.manager_url} "
              f"(nodes {', '.join(settings.nodes)}); Ctrl-C stops it and the stack, or it stops after {max_time_s:g}s",
              flush=True)
        waiter = asyncio.ensure_future(procs[0].wait())
        try:
            await asyncio.wait_for(asyncio.wait({waiter, asyncio.ensure_future(stop.wait())},
                                                return_when=asyncio.FIRST_COMPLETED), max_time_s)
        except TimeoutError:
            pass
        if waiter.done():
            print(f"[burst] Locust exited with {procs[0].returncode}; see {run_dir / 'locust.log'}")
        waiter.cancel()
    finally:
        await _stop(procs)
        await stack.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("[burst] stopped")
    return 0
