"""Where benchmark stacks live and what they share: a run folder in reports/, and the manager's log read back.

Stacks come from harness.stack, the same boot code the scenarios use; each benchmark gets its own.
"""
from __future__ import annotations

import calendar
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from harness.stack import paths
from harness.stack.procs import Proc
from harness.stack.stack import Stack

RUN_ID = time.strftime("bench-%Y%m%d-%H%M%S")
# Production defaults (runtime/manager/config.py), not the harness's fast-fault 1 s / 4 s.
MANAGER_DEFAULTS = {"heartbeat-interval": 5.0, "offline-timeout": 15.0}
LOG_TS = re.compile(r"^ts=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z ")


def root(name: str) -> Path:
    return paths.REPORTS_DIR / RUN_ID / name


@asynccontextmanager
async def stack(name: str, **manager_args: Any) -> AsyncIterator[Stack]:
    s = Stack(root(name), {**MANAGER_DEFAULTS, **manager_args})
    try:
        await s.start()
        yield s
    finally:
        await s.close()


def log_events(proc: Proc, op: str, offset: int = 0) -> list[tuple[float, str]]:
    """(unix time, line) of each `op=` line a process logged after byte `offset` of its log."""
    with open(proc.log_path, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    found = []
    for line in text.splitlines():
        if f" op={op} " in line + " " and (m := LOG_TS.match(line)):
            found.append((calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + int(m.group(2)) / 1000,
                          line))
    return found


def log_size(proc: Proc) -> int:
    return proc.log_path.stat().st_size if proc.log_path.exists() else 0
