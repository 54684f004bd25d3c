"""Faults as scopes that undo themselves: Toxiproxy toxics and links, signals, and SQLite locks.

Every scope records its window in a FaultLog, so checkers and reports know when it was active.
`toxiproxy-python` is synchronous with class-level host/port, so it is wrapped here once and
called off the event loop.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import toxiproxy
from toxiproxy.api import APIConsumer

from harness.procs import Proc

# The toxiproxy client goes through `requests`, which would honour an HTTP proxy from the environment.
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


@dataclass
class FaultWindow:
    fault: str
    target: str
    start: float
    end: float | None = None
    params: dict[str, Any] = field(default_factory=dict)


class FaultLog:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.windows: list[FaultWindow] = []

    @asynccontextmanager
    async def window(self, fault: str, target: str, **params: Any) -> AsyncIterator[FaultWindow]:
        w = FaultWindow(fault, target, time.time(), params=params)
        self.windows.append(w)
        try:
            yield w
        finally:
            w.end = time.time()
            if self.path is not None:
                with open(self.path, "a") as fh:
                    fh.write(json.dumps(asdict(w)) + "\n")


class Toxics:
    """The one wrapper around toxiproxy-python for a run's Toxiproxy server."""

    def __init__(self, host: str, port: int, log: FaultLog, shared_prefix: str | None = None) -> None:
        self.host, self.port, self.log = host, port, log
        # On a Toxiproxy shared with other stacks (TOXIPROXY_URL, parallel workers), only proxies named
        # with this prefix are ours to reset.
        self.shared_prefix = shared_prefix
        self._server = toxiproxy.Toxiproxy()

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def bound() -> Any:
            APIConsumer.host, APIConsumer.port = self.host, self.port
            return fn(*args, **kwargs)
        return await asyncio.to_thread(bound)

    async def create(self, name: str, listen_port: int, upstream_port: int) -> None:
        stale = await self._call(self._server.get_proxy, name)
        if stale is not None:  # left by an earlier run on a shared Toxiproxy
            await self._call(stale.destroy)
        await self._call(self._server.create, upstream=f"127.0.0.1:{upstream_port}", name=name,
                         listen=f"127.0.0.1:{listen_port}", enabled=True)

    async def reset(self) -> None:
        """Every proxy enabled, every toxic gone: the clean state between cases."""
        if self.shared_prefix is None:
            await self._call(self._server.reset)
            return

        def ours() -> None:
            for name, proxy in self._server.proxies().items():
                if name.startswith(self.shared_prefix or ""):
                    for toxic in proxy.toxics():
                        proxy.destroy_toxic(toxic)
                    proxy.enable()
        await self._call(ours)

    async def _proxy(self, name: str) -> Any:
        proxy = await self._call(self._server.get_proxy, name)
        if proxy is None:
            raise KeyError(f"no Toxiproxy proxy {name!r}")
        return proxy

    @asynccontextmanager
    async def link_down(self, name: str) -> AsyncIterator[FaultWindow]:
        proxy = await self._proxy(name)
        async with self.log.window("link_down", name) as w:
            await self._call(proxy.disable)
            try:
                yield w
            finally:
                await self._call(proxy.enable)

    @asynccontextmanager
    async def toxic(self, name: str, kind: str, stream: str = "downstream", toxicity: float = 1.0,
                    **attributes: float) -> AsyncIterator[FaultWindow]:
        proxy = await self._proxy(name)
        toxic_name = f"{kind}_{stream}"
        async with self.log.window(kind, name, stream=stream, **attributes) as w:
            await self._call(proxy.add_toxic, type=kind, name=toxic_name, stream=stream, toxicity=toxicity,
                             attributes=attributes)
            try:
                yield w
            finally:
                await self._call(proxy.destroy_toxic, toxic_name)

    def latency(self, name: str, ms: int, jitter: int = 0, stream: str = "downstream"):  # type: ignore[no-untyped-def]
        return self.toxic(name, "latency", stream, latency=ms, jitter=jitter)

    def hold(self, name: str, ms: int = 0, stream: str = "downstream"):  # type: ignore[no-untyped-def]
        """Toxiproxy's `timeout` toxic: data stops; with ms>0 the connection closes after ms."""
        return self.toxic(name, "timeout", stream, timeout=ms)

    def reset_peer(self, name: str, ms: int = 0, stream: str = "downstream"):  # type: ignore[no-untyped-def]
        return self.toxic(name, "reset_peer", stream, timeout=ms)

    def bandwidth(self, name: str, kb_per_s: int, stream: str = "downstream"):  # type: ignore[no-untyped-def]
        return self.toxic(name, "bandwidth", stream, rate=kb_per_s)

    def slicer(self, name: str, average_size: int = 16, size_variation: int = 8, delay_us: int = 500,  # type: ignore[no-untyped-def]
               stream: str = "downstream"):
        return self.toxic(name, "slicer", stream, average_size=average_size, size_variation=size_variation,
                          delay=delay_us)

    def limit_data(self, name: str, nbytes: int, stream: str = "downstream"):  # type: ignore[no-untyped-def]
        return self.toxic(name, "limit_data", stream, bytes=nbytes)


# ---- process faults ------------------------------------------------------------------------

@asynccontextmanager
async def killed(proc: Proc, log: FaultLog, restart: bool = True) -> AsyncIterator[FaultWindow]:
    """SIGKILL now; start again when the scope ends."""
    async with log.window("sigkill", proc.name) as w:
        proc.kill()
        try:
            yield w
        finally:
            if restart:
                proc.start()


@asynccontextmanager
async def stopped(pid: int, name: str, log: FaultLog) -> AsyncIterator[FaultWindow]:
    """SIGSTOP one process (not its group: a codex child can be frozen alone); SIGCONT on exit."""
    async with log.window("sigstop", name, pid=pid) as w:
        os.kill(pid, signal.SIGSTOP)
        try:
            yield w
        finally:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


_LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the harness closes our stdin (or dies)
db.execute("ROLLBACK")
"""


@asynccontextmanager
async def db_locked(db_path: Path, log: FaultLog) -> AsyncIterator[FaultWindow]:
    """Another process holds SQLite's write lock for the scope's duration."""
    locker = subprocess.Popen([sys.executable, "-c", _LOCKER, str(db_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None
        line = await asyncio.to_thread(locker.stdout.readline)
        if line.strip() != "locked":
            raise RuntimeError(f"could not take the lock on {db_path}")
        async with log.window("db_lock", str(db_path.name)) as w:
            yield w
    finally:
        with locker:  # closes both pipes and reaps the process
            if locker.stdin is not None:
                locker.stdin.close()
            try:
                locker.wait(10)
            except subprocess.TimeoutExpired:
                locker.kill()
