"""A held SQLite write lock: another process takes the manager DB's exclusive lock for the scope."""
from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from harness.faults.window import FaultLog, FaultWindow

LOCK_TIMEOUT_S = 30.0  # the locker waits this long for the manager's own writes to let go

_LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=float(sys.argv[2]))
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the harness closes our stdin (or dies)
db.execute("ROLLBACK")
"""


@asynccontextmanager
async def db_locked(db_path: Path, log: FaultLog) -> AsyncIterator[FaultWindow]:
    """Another process holds SQLite's write lock for the scope's duration."""
    locker = await asyncio.create_subprocess_exec(sys.executable, "-c", _LOCKER, str(db_path), str(LOCK_TIMEOUT_S),
                                                  stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert locker.stdin is not None and locker.stdout is not None
    try:
        try:
            line = await asyncio.wait_for(locker.stdout.readline(), LOCK_TIMEOUT_S + 5)
        except TimeoutError:
            line = b""
        if line.strip() != b"locked":
            raise RuntimeError(f"could not take the lock on {db_path} within {LOCK_TIMEOUT_S}s")
        async with log.window("db_lock", str(db_path.name)) as w:
            yield w
    finally:
        locker.stdin.close()  # the locker rolls back and exits
        try:
            await asyncio.wait_for(locker.wait(), 10)
        except TimeoutError:
            locker.kill()
            await locker.wait()
