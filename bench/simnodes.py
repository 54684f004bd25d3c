"""Simulated nodes: the real node's ManagerLink (register, heartbeat, backoff, reconnect) with no Codex.

Each answers an app-server request at once, so a benchmark measures the manager, not Codex.
`SimFleet` runs them in worker processes (`python -m bench.simnodes ...`, the token in
CODEX_RELAY_NODE_TOKEN), a few thousand per process.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from harness.stack import paths
from runtime import eventloop, logfmt
from runtime.node.config import SETTINGS as NODE_SETTINGS
from runtime.node.config import NodeConfig
from runtime.node.link import ManagerLink
from runtime.protocol import wire

# What `thread/list` answers on a fresh CODEX_HOME: the simulated reply is the size of the real one.
THREAD_LIST: dict[str, Any] = {"data": [], "nextCursor": None}
STOP_GRACE = 10.0
TOKEN_ENV = NODE_SETTINGS.env("token")  # the node token comes by environment, as the real node reads it; never argv


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one: 10,000 sockets need it (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class SimNode:
    def __init__(self, config: NodeConfig) -> None:
        self.link = ManagerLink(config, "bench-sim", self.handle)
        self.answered = 0

    async def handle(self, msg: wire.ManagerFrame) -> None:
        if isinstance(msg, wire.AppserverRequest):
            self.answered += 1
            await self.link.send(wire.AppserverResponse(request_id=msg.request_id,
                                                        result=wire.RpcOutcome(ok=True, result=THREAD_LIST)))


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def _worker(a: argparse.Namespace) -> None:
    nodes = [SimNode(NodeConfig(node_id=f"{a.prefix}-{i:05d}", token=os.environ[TOKEN_ENV], manager_url=a.url,
                                heartbeat_interval=a.heartbeat, manager_silence=a.silence))
             for i in range(a.first, a.first + a.count)]
    runners: list[asyncio.Task[None]] = []
    gate = asyncio.Semaphore(a.inflight)  # registrations in flight: a ramp, not a SYN flood

    async def bring_up(node: SimNode) -> None:
        async with gate:
            runners.append(asyncio.create_task(node.link.run_forever()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.link.registered.wait(), a.register_timeout)

    started = time.monotonic()
    await asyncio.gather(*(bring_up(n) for n in nodes))
    registered = sum(n.link.registered.is_set() for n in nodes)
    _emit("ready", registered=registered, count=len(nodes), seconds=round(time.monotonic() - started, 3))

    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    deadline = time.monotonic() + a.deadline
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = await asyncio.wait_for(stdin.readline(), left)
        except TimeoutError:
            break
        if not line:  # the parent went away: never outlive it
            break
        _emit("stats", registered=sum(1 for n in nodes if n.link.registered.is_set()),
              link_losses=sum(n.link.link_losses for n in nodes),
              answered=sum(n.answered for n in nodes))
    for task in runners:
        task.cancel()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.simnodes", description=__doc__)
    p.add_argument("--url", required=True, help="the manager's node WebSocket URL")
    p.add_argument("--prefix", default="sim")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--heartbeat", type=float, default=NodeConfig.heartbeat_interval)
    p.add_argument("--silence", type=float, default=NodeConfig.manager_silence)
    p.add_argument("--inflight", type=int, default=50)
    p.add_argument("--register-timeout", type=float, default=120.0)
    p.add_argument("--deadline", type=float, default=3600.0, help="exit after this many seconds, whatever happens")
    a = p.parse_args(argv)
    raise_fd_limit()
    logfmt.setup("error")  # a fleet's routine reconnect lines would drown the log; losses are counted instead
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    eventloop.run(_worker(a))  # the load side stays on one loop whatever the servers use
    os._exit(0)  # thousands of sockets: let the kernel close them instead of a slow graceful close


@dataclass
class Worker:
    proc: asyncio.subprocess.Process
    count: int


class SimFleet:
    """Worker processes holding `total` simulated nodes; every process is killed by its own pid."""

    def __init__(self, url: str, token: str, total: int, per_worker: int, prefix: str = "sim",
                 log_dir: str | None = None, **options: float) -> None:
        self.url, self.token, self.total, self.per_worker, self.prefix = url, token, total, per_worker, prefix
        self.options = options
        self.log_dir = log_dir
        self.workers: list[Worker] = []

    async def start(self, timeout: float) -> dict[str, Any]:
        """Start every worker and wait until each says its nodes registered; returns the totals."""
        first = 0
        while first < self.total:
            count = min(self.per_worker, self.total - first)
            argv = [sys.executable, "-m", "bench.simnodes", "--url", self.url,
                    "--prefix", self.prefix, "--first", str(first), "--count", str(count)]
            for key, value in self.options.items():
                argv += [f"--{key.replace('_', '-')}", str(value)]
            stderr = await asyncio.to_thread(open, os.path.join(self.log_dir, f"simnodes-{first}.log"), "ab") \
                if self.log_dir else None
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=stderr or asyncio.subprocess.DEVNULL,
                                                        cwd=paths.REPO_ROOT, start_new_session=True,
                                                        env={**os.environ, TOKEN_ENV: self.token})
            if stderr:
                stderr.close()
            self.workers.append(Worker(proc, count))
            first += count
        readies = await asyncio.wait_for(asyncio.gather(*(self._line(w, "ready") for w in self.workers)), timeout)
        return {"registered": sum(r["registered"] for r in readies),
                "seconds": max(r["seconds"] for r in readies)}

    async def stats(self, timeout: float = 30.0) -> dict[str, int]:
        for w in self.workers:
            assert w.proc.stdin is not None
            w.proc.stdin.write(b"stats\n")
        lines = await asyncio.wait_for(asyncio.gather(*(self._line(w, "stats") for w in self.workers)), timeout)
        return {key: sum(int(x[key]) for x in lines) for key in ("registered", "link_losses", "answered")}

    @staticmethod
    async def _line(w: Worker, event: str) -> dict[str, Any]:
        assert w.proc.stdout is not None
        while raw := await w.proc.stdout.readline():
            msg = json.loads(raw)
            if msg.get("event") == event:
                return dict(msg)
        raise RuntimeError(f"simnodes worker {w.proc.pid} exited ({w.proc.returncode}) before {event!r}")

    async def stop(self) -> None:
        for w in self.workers:
            if w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.terminate()
        for w in self.workers:
            try:
                await asyncio.wait_for(w.proc.wait(), STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await w.proc.wait()
        self.workers.clear()


if __name__ == "__main__":
    main()
