"""Samples RSS, open file descriptors and threads of every process in the chain, for the leak trend.

The chain is the manager, each node, each node's codex child and the bot; the harness's own helpers
(Toxiproxy, the mock upstream, the fake Telegram) are not the product and are left out.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import psutil

from harness.stack.procs import Proc

CHAIN = ("manager", "bot")  # plus every node, which the stack names by node_id


def chain(procs: dict[str, Proc], nodes: list[str]) -> dict[str, int]:
    """Name -> pid of every live process in the chain; a node's codex child is `<node>/codex`."""
    out: dict[str, int] = {}
    for name, proc in procs.items():
        if not proc.alive or (name not in CHAIN and name not in nodes):
            continue
        out[name] = proc.pid
        if name in nodes:
            for child in proc.children():
                try:
                    if "codex" in child.name():
                        out[f"{name}/codex"] = child.pid
                except psutil.NoSuchProcess:
                    continue
    return out


def sample(name: str, pid: int) -> dict[str, Any] | None:
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            return {"t": time.time(), "process": name, "pid": pid, "rss": p.memory_info().rss,
                    "fds": p.num_fds(), "threads": p.num_threads()}
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None  # it died between listing and sampling: a kill fault, not a harness error


class Sampler:
    """Appends one line per process per interval to resources.jsonl and keeps the latest for progress."""

    def __init__(self, procs: dict[str, Proc], nodes: list[str], interval_s: float, path: Path) -> None:
        self.procs, self.nodes, self.interval_s, self.path = procs, nodes, interval_s, path
        self.samples: list[dict[str, Any]] = []
        self.latest: dict[str, dict[str, Any]] = {}

    def tick(self) -> None:
        batch = [s for name, pid in chain(self.procs, self.nodes).items() if (s := sample(name, pid)) is not None]
        self.samples += batch
        self.latest = {s["process"]: s for s in batch}
        with open(self.path, "a") as fh:
            fh.writelines(json.dumps(s) + "\n" for s in batch)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.tick()
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
