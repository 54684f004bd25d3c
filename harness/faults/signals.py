"""Process faults by signal: SIGKILL with a restart when the scope ends, SIGSTOP undone by SIGCONT."""
from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from harness.faults.window import FaultLog, FaultWindow
from harness.stack.procs import Proc


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
