"""Process faults by signal: SIGKILL with a restart when the scope ends, SIGTERM and a restart once the process
has shut itself down, SIGSTOP undone by SIGCONT."""
from __future__ import annotations

import asyncio
import os
import signal
import time
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
async def terminated(proc: Proc, log: FaultLog, exit_within: float) -> AsyncIterator[FaultWindow]:
    """SIGTERM to the process alone, as systemd's KillMode=mixed sends it: it shuts down on its own (a node drains
    its turns). When the scope ends, it is started again once it has exited. The window notes how long the shutdown
    took (exit_s), a process still running after exit_within (then SIGKILLed), and anything it left behind in its
    group (then killed): both are the shutdown's defects, which the harness must not hide."""
    async def exited_at() -> float | None:
        return time.time() if await proc.wait_exit(exit_within) else None

    async with log.window("sigterm", proc.name) as w:
        proc.sigterm()
        exit_watch = asyncio.create_task(exited_at())  # watched from the signal on, so exit_s is the shutdown's own
        try:
            yield w
        finally:
            if (at := await exit_watch) is not None:
                w.params["exit_s"] = round(at - w.start, 2)
            else:
                w.params["not_exited"] = f"still running {exit_within:g}s after SIGTERM; SIGKILLed"
            if left := proc.group_left():
                w.params["left_behind"] = left
            proc.kill()  # reaps it, and kills whatever of its group is left
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
