"""The node's finished results, on disk: written before they are sent, so a SIGKILL loses none.

One small SQLite file in the node's state directory. A result is stored the moment its task ends and marked
sent once its frame has left; after a restart the unsent ones go out with the next registration, and the
manager's task_sync is answered from here too, so a task the manager still holds open is never reported
"unknown" while its result exists. Plain sqlite3 on the loop: each write is a few small rows in WAL mode with
synchronous=NORMAL, which commits without an fsync, far below a turn's own cost.
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

KEEP_SENT = 1_000  # sent results kept for task_sync replays; the manager's DB is the lasting record


class Outbox:
    """Opened on first use, so a node that has produced no result yet (or a bench's simulated one) holds no file.
    An empty state_dir keeps it in memory: only for code that builds a NodeConfig by hand."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "outbox.sqlite3") if state_dir else ":memory:"
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS results (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "task_id TEXT NOT NULL UNIQUE, frame BLOB NOT NULL, sent INTEGER NOT NULL DEFAULT 0, "
                             "at REAL NOT NULL)")
        return self._db

    def put(self, task_id: str, frame: bytes) -> None:
        """Keep a finished task's result frame; a task finishes once, so a repeat changes nothing."""
        self.db.execute("INSERT INTO results (task_id, frame, at) VALUES (?, ?, ?) ON CONFLICT (task_id) DO NOTHING",
                        (task_id, frame, time.time()))

    def sent(self, task_id: str) -> None:
        self.db.execute("UPDATE results SET sent = 1 WHERE task_id = ?", (task_id,))
        self.db.execute("DELETE FROM results WHERE sent = 1 AND seq <= (SELECT seq FROM results WHERE sent = 1 "
                        "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (KEEP_SENT,))

    @property
    def empty_memory(self) -> bool:
        return self._db is None and self.path == ":memory:"  # nothing was ever put, and no file can hold any

    def unsent(self) -> list[tuple[str, bytes]]:
        if self.empty_memory:
            return []
        return [(t, bytes(f)) for t, f in self.db.execute("SELECT task_id, frame FROM results WHERE sent = 0 "
                                                          "ORDER BY seq")]

    def frame(self, task_id: str) -> bytes | None:
        if self.empty_memory:
            return None
        row = self.db.execute("SELECT frame FROM results WHERE task_id = ?", (task_id,)).fetchone()
        return bytes(row[0]) if row else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
