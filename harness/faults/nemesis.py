"""The nemesis: a seeded schedule of faults, played one at a time against a live stack.

The same seed and settings give the same schedule (kinds, targets, times, durations, parameters), so a
failing soak can be replayed. After each fault, recovery probes run through its path until one
succeeds, so every fault gets a measured RTO before the next one starts.
"""
from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.faults.kinds import KINDS
from harness.history.history import Fault, History
from harness.load.steady import Operations
from harness.stack.stack import Stack
from runtime.backoff import Backoff

MAX_FAULTS = 10_000


@dataclass(frozen=True)
class Planned:
    at_s: float          # seconds after the soak's start
    kind: str
    target: str          # manager, upstream, bot, or a node_id
    duration_s: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return "all" if self.target in ("manager", "upstream", "bot") else self.target


def schedule(seed: int, nodes: list[str], kinds: list[str], start_s: float, end_s: float, interval_s: float,
             duration_s: tuple[float, float]) -> list[Planned]:
    """Faults between start_s and end_s, about interval_s apart; kinds come in seeded shuffled rounds, so a
    short run still sees every kind once before any kind repeats."""
    rng = random.Random(seed)
    out: list[Planned] = []
    t = start_s
    deck: list[str] = []
    while len(out) < MAX_FAULTS:
        t += rng.uniform(0.5, 1.5) * interval_s
        length = round(rng.uniform(*duration_s), 2)
        if t + length > end_s:
            break
        if not deck:
            deck = list(kinds)
            rng.shuffle(deck)
        kind = KINDS[deck.pop()]
        target = rng.choice(nodes) if kind.target == "node" else kind.target
        out.append(Planned(round(t, 2), kind.name, target, length, kind.draw(rng)))
        t += length
    return out


class Nemesis:
    def __init__(self, stack: Stack, history: History, ops: Operations, nodes: list[str],
                 recovery_timeout_s: float, probe_interval_s: float) -> None:
        self.stack, self.history, self.ops, self.nodes = stack, history, ops, nodes
        self.recovery_timeout_s, self.probe_interval_s = recovery_timeout_s, probe_interval_s
        self.last: str = "none yet"
        self.done: list[Fault] = []
        self.skipped: list[str] = []

    async def run(self, plan: list[Planned], t0: float, stop: asyncio.Event, until: float) -> None:
        for p in plan:
            if stop.is_set() or not await _sleep(stop, t0 + p.at_s - time.time()):
                return
            if time.time() + p.duration_s + self.recovery_timeout_s > until:
                self.skipped.append(f"{p.kind} on {p.target}: no time left to recover before the end")
                continue
            await self.play(p, stop)

    async def play(self, p: Planned, stop: asyncio.Event) -> None:
        self.last = f"{p.kind} on {p.target} for {p.duration_s:.1f}s (now)"
        kind = KINDS[p.kind]
        async with kind.scope(self.stack, p.target, p.params) as window:
            if window is None:
                self.skipped.append(f"{p.kind} on {p.target}: nothing to fault right now")
                return
            await _sleep(stop, p.duration_s)  # holding the fault for its planned time is the point
        assert window.end is not None
        # What the window noted while it ran (a drain's exit_s, a half-open link's detection) joins the drawn params.
        fault = Fault(p.kind, p.target, p.scope, window.start, window.end, {**p.params, **window.params})
        self.history.add(fault)
        self.done.append(fault)
        if kind.after is not None:
            await kind.after(self.stack)
        rto = await self.recover(p.scope, fault.end, "chat_probe" if kind.target == "bot" else "probe")
        self.last = f"{p.kind} on {p.target} ({p.duration_s:.1f}s), " + \
            (f"recovered in {rto:.1f}s" if rto is not None else "NOT recovered")

    async def recover(self, scope: str, since: float, probe: str = "probe") -> float | None:
        """Probe each node in the fault's scope until a turn succeeds there; the slowest is the RTO. A fault of
        the bot is probed by chat_probe, a turn sent through the bot, which is the path it broke."""
        nodes = self.nodes if scope == "all" else [scope]
        results = await asyncio.gather(*(self._probe(n, since, probe) for n in nodes))
        return None if None in results else max(r for r in results if r is not None)

    async def _probe(self, node: str, since: float, probe: str) -> float | None:
        deadline = since + self.recovery_timeout_s
        async for _ in Backoff(self.probe_interval_s, factor=1).tries(deadline - time.time()):
            op = await self.ops.run(probe, node, self.ops.chat(node, -1),
                                    timeout=max(1.0, min(10.0, deadline - time.time())))
            if op.outcome == "ok" and op.end is not None:
                return op.end - since
        return None


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, or wake early when the run is stopped; True if the full time passed."""
    if seconds <= 0:
        return not stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return True
    return False


def plan_json(plan: list[Planned]) -> list[dict[str, Any]]:
    return [asdict(p) for p in plan]
