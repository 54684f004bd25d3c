"""`codex-relay-manager backup PATH`: a consistent copy of the manager's DB, taken while the manager runs.

SQLite's online backup copies page by page and starts over if a write lands meanwhile, so the copy is one
committed state; it is written beside PATH and renamed into place, so PATH is never half a database.
"""
from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
from collections.abc import Sequence

from runtime import logfmt
from runtime.logfmt import log

logger = logging.getLogger("codex_manager.backup")
EXIT_BACKUP = 3


def backup(db: str, dest: str) -> int:
    """Copy `db` to `dest`; returns the copy's size in bytes."""
    if not os.path.exists(db):
        raise FileNotFoundError(f"no database at {db}")
    partial = f"{dest}.partial"
    src = sqlite3.connect(db, timeout=30)
    try:
        out = sqlite3.connect(partial)
        try:
            src.backup(out, pages=1024)
            (verdict,) = out.execute("PRAGMA integrity_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"the copy failed its integrity check: {verdict}")
        finally:
            out.close()
    finally:
        src.close()
    os.replace(partial, dest)
    return os.path.getsize(dest)


def main(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser(prog="codex-relay-manager backup", description=__doc__)
    p.add_argument("path", help="where the copy goes (replaced if it exists)")
    p.add_argument("--db", default=os.environ.get("CODEX_RELAY_MANAGER_DB", "manager.sqlite3"),
                   help="the live database (default: CODEX_RELAY_MANAGER_DB, else manager.sqlite3)")
    a = p.parse_args(argv)
    logfmt.setup()
    try:
        size = backup(a.db, a.path)
    except (OSError, sqlite3.Error) as exc:
        log(logger, logging.ERROR, "backup_failed", db=a.db, path=a.path, error=str(exc),
            fix="check --db names the manager's database and PATH's folder is writable", exit_code=EXIT_BACKUP)
        sys.exit(EXIT_BACKUP)
    log(logger, logging.INFO, "backup_done", db=a.db, path=a.path, bytes=size)
