"""The manager's garbage collector: measured, and its full collections scheduled.

With 10,000 node sockets the manager holds about a million tracked objects. CPython starts a
full collection whenever a quarter as many objects again have been promoted since the last one;
with a fleet heartbeating, that was every 10 s or so, and each one stopped every handler for
0.3-0.5 s (bench fleet). The fix is to scan the long-lived heap rarely and on purpose:
- after any full collection that took longer than SLOW_PAUSE (the fleet just grew), `gc.freeze()`
  moves its survivors out of the collector's sight, so the automatic collections that follow only
  look at what is new;
- every `interval` seconds one scheduled pass unfreezes, collects everything and freezes again, so
  cyclic garbage among once-frozen objects is still collected, at most one interval late.
/metrics shows every pause, so the trade is visible.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from runtime.logfmt import log

logger = logging.getLogger("codex_manager.gc")

SLOW_PAUSE = 0.05  # seconds: a full collection this slow scanned a large unfrozen heap
TICK = 1.0         # seconds between checks for a due freeze or pass


@contextmanager
def collection_paused() -> Iterator[None]:
    """For a synchronous burst of short-lived objects, such as a fleet-sized reply: reference counting
    frees them at its end, and a collection in the middle would only promote them toward a full one.
    Only for code that never awaits: nothing else may run while the collector is off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class Collector:
    interval: float  # seconds between scheduled full collections; 0 leaves CPython's own schedule
    collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    seconds: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    max_pause: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    scheduled: int = 0
    freezes: int = 0
    _started: float = 0.0
    _freeze_due: bool = False

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        if self.interval > 0:
            self.full_pass()  # what startup built (modules, routes) need never be scanned again

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        gc.unfreeze()

    def full_pass(self) -> None:
        gc.unfreeze()
        collected = gc.collect()
        gc.freeze()
        self.scheduled += 1
        self._freeze_due = False
        log(logger, logging.DEBUG, "gc_full_pass", collected=collected, frozen=gc.get_freeze_count())

    async def run(self) -> None:
        next_pass = time.monotonic() + self.interval
        while self.interval > 0:
            await asyncio.sleep(TICK)
            if time.monotonic() >= next_pass:
                self.full_pass()
                next_pass = time.monotonic() + self.interval
            elif self._freeze_due:
                # The slow collection has just run: what it left is live, so nothing is lost by freezing it.
                gc.freeze()
                self.freezes += 1
                self._freeze_due = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen = int(info["generation"])
        took = time.perf_counter() - self._started
        self.collections[gen] += 1
        self.seconds[gen] += took
        self.max_pause[gen] = max(self.max_pause[gen], took)
        if gen == 2 and took > SLOW_PAUSE:
            self._freeze_due = True

    def metric_lines(self) -> list[str]:
        lines = ["# TYPE relay_gc_collections_total counter"]
        lines += [f'relay_gc_collections_total{{generation="{g}"}} {n}' for g, n in enumerate(self.collections)]
        lines.append("# TYPE relay_gc_pause_seconds_total counter")
        lines += [f'relay_gc_pause_seconds_total{{generation="{g}"}} {s:.6f}' for g, s in enumerate(self.seconds)]
        lines.append("# TYPE relay_gc_pause_max_seconds gauge")
        lines += [f'relay_gc_pause_max_seconds{{generation="{g}"}} {s:.6f}' for g, s in enumerate(self.max_pause)]
        lines += ["# TYPE relay_gc_scheduled_passes_total counter", f"relay_gc_scheduled_passes_total {self.scheduled}",
                  "# TYPE relay_gc_freezes_total counter", f"relay_gc_freezes_total {self.freezes}",
                  "# TYPE relay_gc_frozen_objects gauge", f"relay_gc_frozen_objects {gc.get_freeze_count()}"]
        return lines
