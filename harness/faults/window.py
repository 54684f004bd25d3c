"""Fault windows: when each fault was active, kept in memory and appended to the stack's faults.jsonl."""
from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


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
            self._append(w)

    def _append(self, w: FaultWindow) -> None:
        if self.path is not None:
            with open(self.path, "a") as fh:  # one short line to local disk, as History.add writes
                fh.write(json.dumps(asdict(w)) + "\n")
