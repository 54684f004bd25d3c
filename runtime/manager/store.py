"""The manager's SQLite state (aiosqlite): versioned schema, and one transaction per change.

Every failed or locked write surfaces as RelayError(ErrorKind.STORAGE_ERROR) with nothing half-written.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import sqlite3
import time
from contextlib import asynccontextmanager
from typing import Any
from collections.abc import AsyncIterator, Iterable

import aiosqlite

from runtime.logfmt import log
from runtime.manager.nodeview import COLUMNS as NODE_COLUMNS, NodeView
from runtime.protocol import (FINAL_STATES, ApprovalState, ErrorKind, RelayError, TaskState, encode, encode_bytes,
                              final_state, new_id)
from runtime.protocol.api import DEFAULT_RESULT_MODE, DEFAULT_VERBOSE
from runtime.protocol.wire import ApprovalRequest, EventFrame, TaskAssign

logger = logging.getLogger("codex_manager.store")

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tokens (
        token_id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, node_id TEXT, note TEXT,
        created_at REAL NOT NULL, revoked_at REAL);
    CREATE TABLE nodes (
        node_id TEXT PRIMARY KEY, token_id TEXT, version TEXT, first_seen REAL NOT NULL,
        last_seen REAL NOT NULL, online INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE chat_routes (
        chat_key TEXT PRIMARY KEY, node_id TEXT, model TEXT, updated_at REAL NOT NULL);
    CREATE TABLE threads (
        chat_key TEXT NOT NULL, node_id TEXT NOT NULL, thread_id TEXT NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (chat_key, node_id));
    CREATE TABLE tasks (
        task_id TEXT PRIMARY KEY, trace_id TEXT NOT NULL, node_id TEXT NOT NULL, chat_key TEXT,
        prompt TEXT NOT NULL, thread_id TEXT, model TEXT, state TEXT NOT NULL, created_at REAL NOT NULL,
        updated_at REAL NOT NULL, deadline REAL NOT NULL, result TEXT, error_kind TEXT);
    CREATE INDEX tasks_open ON tasks (state) WHERE state NOT IN ('done', 'failed');
    CREATE TABLE approvals (
        approval_id TEXT PRIMARY KEY, node_id TEXT NOT NULL, task_id TEXT, trace_id TEXT,
        payload TEXT NOT NULL, state TEXT NOT NULL, decision TEXT, decided_by TEXT,
        created_at REAL NOT NULL, decided_at REAL);
    CREATE TABLE users (user_id INTEGER PRIMARY KEY, role TEXT NOT NULL, added_at REAL NOT NULL);
    """,
    # Retention: the sweep deletes finished tasks and decided approvals by age, a batch at a time.
    """
    CREATE INDEX tasks_final_age ON tasks (updated_at) WHERE state IN ('done', 'failed');
    CREATE INDEX approvals_decided_age ON approvals (decided_at) WHERE decided_at IS NOT NULL;
    """,
    # The event cursor: numbered events a client can ask for again, and this database's identity.
    """
    CREATE TABLE events (seq INTEGER PRIMARY KEY, frame BLOB NOT NULL, at REAL NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta VALUES ('manager_id', lower(hex(randomblob(8))));
    """,
    # A task the user stopped ends `cancelled`, a final state of its own: the partial indexes name every final state.
    """
    DROP INDEX tasks_open;
    CREATE INDEX tasks_open ON tasks (state) WHERE state NOT IN ('cancelled', 'done', 'failed');
    DROP INDEX tasks_final_age;
    CREATE INDEX tasks_final_age ON tasks (updated_at) WHERE state IN ('cancelled', 'done', 'failed');
    """,
    # Per chat: a reasoning effort beside the model; per chat and node: the settings its thread works with.
    """
    ALTER TABLE chat_routes ADD COLUMN effort TEXT;
    ALTER TABLE threads ADD COLUMN cwd TEXT;
    ALTER TABLE threads ADD COLUMN sandbox TEXT;
    ALTER TABLE threads ADD COLUMN approval_policy TEXT;
    """,
    # Per chat: a message sent while a turn runs waits and runs next (1), or is added to that turn (0, the default).
    """
    ALTER TABLE chat_routes ADD COLUMN queue INTEGER NOT NULL DEFAULT 0;
    """,
    # How a chat's turns are shown (/verbose, /result); NULL is the protocol's default.
    """
    ALTER TABLE chat_routes ADD COLUMN verbose INTEGER;
    ALTER TABLE chat_routes ADD COLUMN result_mode TEXT;
    """,
)
# The final states as SQL, written exactly as the partial indexes above have them, so SQLite uses those indexes.
FINAL_SQL = "(" + ", ".join(f"'{s.value}'" for s in sorted(FINAL_STATES)) + ")"
assert FINAL_SQL == "('cancelled', 'done', 'failed')", "a new final state needs a migration of the partial indexes"
ROUTE_FIELDS = ("node_id", "model", "effort", "queue", "verbose", "result_mode")  # a chat's settings, a column each
ROUTE_DEFAULTS = {"verbose": DEFAULT_VERBOSE, "result_mode": DEFAULT_RESULT_MODE}  # what a NULL column reads as
THREAD_SETTINGS = ("cwd", "sandbox", "approval_policy")


def hash_token(token: str) -> str:
    # Tokens are 256-bit random strings, so a plain SHA-256 is enough: there is nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def _row(cursor: aiosqlite.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


async def fetch(db: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    """Rows as dicts: the connection's row factory is _row, which aiosqlite's types cannot know."""
    rows: Any = await db.execute_fetchall(sql, tuple(params))
    return list(rows)


class Store:
    def __init__(self, path: str, busy_timeout_ms: int = 2000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._db: aiosqlite.Connection | None = None
        # One connection serves every coroutine, so write transactions must take turns.
        self._write_lock = asyncio.Lock()
        self.nodes = NodeView()
        self.manager_id = ""
        self.last_seq = 0  # of the events table; numbers are handed out under the write lock

    async def open(self) -> None:
        try:
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            self._db.row_factory = _row  # type: ignore[assignment]
            await self._db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            await self._db.execute("PRAGMA journal_mode = WAL")
            await self._db.execute("PRAGMA synchronous = NORMAL")
            await self._migrate()
            self.manager_id = (await self.query("SELECT value FROM meta WHERE key = 'manager_id'"))[0]["value"]
            self.last_seq = (await self.query("SELECT COALESCE(MAX(seq), 0) AS seq FROM events"))[0]["seq"]
            self.nodes.load(await self.query(f"SELECT {', '.join(NODE_COLUMNS)} FROM nodes"))
        except sqlite3.Error as exc:
            raise RelayError(ErrorKind.STORAGE_ERROR, f"cannot open database {self.path}: {exc}") from None

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "Store.open() first"
        return self._db

    async def _migrate(self) -> None:
        await self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        rows = await fetch(self.db, "SELECT version FROM schema_version")
        current = rows[0]["version"] if rows else 0
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            await self.db.executescript(f"BEGIN IMMEDIATE; {script}; DELETE FROM schema_version; "
                                        f"INSERT INTO schema_version VALUES ({version}); COMMIT;")

    @asynccontextmanager
    async def tx(self, op: str) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; any SQLite failure rolls back and becomes storage_error."""
        async with self._write_lock:
            async with self._tx(op) as db:
                yield db

    @asynccontextmanager
    async def _tx(self, op: str) -> AsyncIterator[aiosqlite.Connection]:
        try:
            await self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            log(logger, logging.WARNING, "storage_error", during=op, error=str(exc))
            raise RelayError(ErrorKind.STORAGE_ERROR, f"{op}: {exc}") from None
        try:
            yield self.db
            await self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            await self._rollback()
            log(logger, logging.WARNING, "storage_error", during=op, error=str(exc))
            raise RelayError(ErrorKind.STORAGE_ERROR, f"{op}: {exc}") from None
        except BaseException:
            await self._rollback()
            raise

    async def _rollback(self) -> None:
        try:
            await self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # nothing was begun, or SQLite already rolled back on its own

    async def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        try:
            return await fetch(self.db, sql, params)
        except sqlite3.Error as exc:
            raise RelayError(ErrorKind.STORAGE_ERROR, f"read failed: {exc}") from None

    # ---- tokens ----------------------------------------------------------------------------
    async def create_token(self, node_id: str | None, note: str | None) -> tuple[dict[str, Any], str]:
        token = "crt_" + secrets.token_urlsafe(32)
        row = {"token_id": new_id("tok"), "node_id": node_id, "note": note, "created_at": time.time()}
        async with self.tx("create_token") as db:
            await db.execute("INSERT INTO tokens (token_id, token_hash, node_id, note, created_at) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (row["token_id"], hash_token(token), node_id, note, row["created_at"]))
        return row, token

    async def token_for(self, token: str) -> dict[str, Any] | None:
        rows = await self.query("SELECT token_id, node_id, revoked_at FROM tokens WHERE token_hash = ?",
                                (hash_token(token),))
        return rows[0] if rows else None

    async def list_tokens(self) -> list[dict[str, Any]]:
        return await self.query("SELECT token_id, node_id, note, created_at, revoked_at FROM tokens "
                                "ORDER BY created_at")

    async def node_token(self, node_id: str) -> str | None:
        """The live (not revoked) token the node last registered with, if any."""
        rows = await self.query("SELECT n.token_id FROM nodes n JOIN tokens t ON t.token_id = n.token_id "
                                "WHERE n.node_id = ? AND t.revoked_at IS NULL", (node_id,))
        return rows[0]["token_id"] if rows else None

    async def revoke_token(self, token_id: str) -> bool:
        async with self.tx("revoke_token") as db:
            cur = await db.execute("UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL",
                                   (time.time(), token_id))
            return cur.rowcount == 1

    # ---- nodes -----------------------------------------------------------------------------
    async def node_online(self, node_id: str, token_id: str, version: str) -> None:
        now = time.time()
        async with self.tx("node_online") as db:
            await db.execute(
                "INSERT INTO nodes (node_id, token_id, version, first_seen, last_seen, online) "
                "VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (node_id) DO UPDATE SET token_id = excluded.token_id, "
                "version = excluded.version, last_seen = excluded.last_seen, online = 1",
                (node_id, token_id, version, now, now))
        self.nodes.seen_online(node_id, version, now)

    async def node_offline(self, node_id: str, last_seen: float) -> None:
        async with self.tx("node_offline") as db:
            await db.execute("UPDATE nodes SET online = 0, last_seen = ? WHERE node_id = ?", (last_seen, node_id))
        self.nodes.update(node_id, online=0, last_seen=last_seen)

    async def touch_nodes(self, seen: dict[str, float]) -> None:
        async with self.tx("touch_nodes") as db:
            await db.executemany("UPDATE nodes SET last_seen = ? WHERE node_id = ?",
                                 [(ts, node_id) for node_id, ts in seen.items()])
        for node_id, ts in seen.items():
            self.nodes.update(node_id, last_seen=ts)

    async def mark_all_offline(self) -> None:
        # At startup nothing is connected yet, whatever the last run left behind.
        async with self.tx("mark_all_offline") as db:
            await db.execute("UPDATE nodes SET online = 0 WHERE online = 1")
        self.nodes.set_all(online=0)

    def list_nodes(self, online: bool | None = None, after: str = "", limit: int = -1) -> list[dict[str, Any]]:
        """Nodes in node_id order, from the committed mirror. `after` and `limit` page through a fleet
        by key, so its last page costs what its first does."""
        return self.nodes.page(online, after, limit)

    def node(self, node_id: str) -> dict[str, Any] | None:
        return self.nodes.get(node_id)

    # ---- chats and threads -----------------------------------------------------------------
    async def chat(self, chat_key: str) -> dict[str, Any]:
        rows = await self.query(f"SELECT {', '.join(ROUTE_FIELDS)} FROM chat_routes WHERE chat_key = ?", (chat_key,))
        route = {k: ROUTE_DEFAULTS.get(k) if v is None else v for k, v in
                 (rows[0] if rows else dict.fromkeys(ROUTE_FIELDS)).items()}
        route["queue"] = bool(route["queue"])
        threads = await self.query(f"SELECT node_id, thread_id, {', '.join(THREAD_SETTINGS)} FROM threads "
                                   "WHERE chat_key = ?", (chat_key,))
        bindings = {t.pop("node_id"): {k: v for k, v in t.items() if v is not None} for t in threads}
        return {"chat_key": chat_key, **route, "threads": {n: b["thread_id"] for n, b in bindings.items()},
                "bindings": bindings}

    async def update_chat(self, chat_key: str, fields: dict[str, Any]) -> None:
        """Set the chat's node, model, effort, queue mode and/or how its turns are shown; `thread_id` (None = start
        fresh) binds a thread on its node, with the settings in `fields` (absent ones are the node's defaults)."""
        now = time.time()
        async with self.tx("update_chat") as db:
            await db.execute("INSERT INTO chat_routes (chat_key, updated_at) VALUES (?, ?) "
                             "ON CONFLICT (chat_key) DO NOTHING", (chat_key, now))
            for column in ROUTE_FIELDS:
                if column in fields:
                    await db.execute(f"UPDATE chat_routes SET {column} = ?, updated_at = ? WHERE chat_key = ?",
                                     (fields[column], now, chat_key))
            if "thread_id" in fields:
                rows = await fetch(db, "SELECT node_id FROM chat_routes WHERE chat_key = ?", (chat_key,))
                node_id = rows[0]["node_id"]
                if node_id is None:
                    raise RelayError(ErrorKind.INVALID_REQUEST, "select a node before switching threads")
                await db.execute("DELETE FROM threads WHERE chat_key = ? AND node_id = ?", (chat_key, node_id))
                if fields["thread_id"] is not None:
                    await db.execute("INSERT INTO threads (chat_key, node_id, thread_id, updated_at, cwd, sandbox, "
                                     "approval_policy) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     (chat_key, node_id, fields["thread_id"], now,
                                      *(fields.get(k) for k in THREAD_SETTINGS)))

    @staticmethod
    async def _bind_result(db: aiosqlite.Connection, task: dict[str, Any], thread_id: str, now: float) -> None:
        """The thread a chat's turn ran on becomes the chat's, without undoing a choice made meanwhile: a new
        thread binds only a chat that has none, a replacement (the node restarted a thread that had no turns)
        only where its predecessor is still bound."""
        if task["thread_id"] is None:
            await db.execute("INSERT INTO threads (chat_key, node_id, thread_id, updated_at) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT (chat_key, node_id) DO NOTHING",
                             (task["chat_key"], task["node_id"], thread_id, now))
        elif thread_id != task["thread_id"]:
            await db.execute("UPDATE threads SET thread_id = ?, updated_at = ? WHERE chat_key = ? AND node_id = ? "
                             "AND thread_id = ?", (thread_id, now, task["chat_key"], task["node_id"], task["thread_id"]))

    # ---- tasks -----------------------------------------------------------------------------
    async def create_task(self, task: TaskAssign, deadline: float) -> bool:
        """False if the task_id exists already: two callers racing with one id get one task."""
        now = time.time()
        async with self.tx("create_task") as db:
            cur = await db.execute(
                "INSERT INTO tasks (task_id, trace_id, node_id, chat_key, prompt, thread_id, model, state, "
                "created_at, updated_at, deadline) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (task_id) DO NOTHING",
                (task.task_id, task.trace_id, task.node_id, task.chat_key, task.prompt,
                 task.thread_id, task.model, TaskState.QUEUED, now, now, deadline))
            return cur.rowcount == 1

    async def task(self, task_id: str) -> dict[str, Any] | None:
        rows = await self.query("SELECT * FROM tasks WHERE task_id = ?", (task_id,))
        if not rows:
            return None
        row = rows[0]
        row["result"] = json.loads(row["result"]) if row["result"] else None
        return row

    async def advance_task(self, task_id: str, state: TaskState) -> bool:
        """queued -> assigned -> running; never moves a task backwards or out of a final state."""
        order = [TaskState.QUEUED, TaskState.ASSIGNED, TaskState.RUNNING]
        earlier = [s.value for s in order[: order.index(state)]]
        marks = ",".join("?" * len(earlier))
        async with self.tx("advance_task") as db:
            cur = await db.execute(f"UPDATE tasks SET state = ?, updated_at = ? WHERE task_id = ? "
                                   f"AND state IN ({marks})", (state, time.time(), task_id, *earlier))
            return cur.rowcount == 1

    async def finish_task(self, task_id: str, result: dict[str, Any]) -> dict[str, Any] | None:
        """Record the one final state; None if the task is unknown or already final (a duplicate).

        The thread a turn ran on, and the approvals the task left pending (withdrawn), commit with it.
        """
        state = final_state(bool(result.get("ok")), result.get("error_kind"))
        now = time.time()
        async with self.tx("finish_task") as db:
            rows = await fetch(db, "SELECT * FROM tasks WHERE task_id = ?", (task_id,))
            if not rows:
                return None
            task = rows[0]
            if task["state"] in FINAL_STATES:
                return None
            await db.execute("UPDATE tasks SET state = ?, updated_at = ?, result = ?, error_kind = ?, "
                             "thread_id = COALESCE(?, thread_id) WHERE task_id = ?",
                             (state, now, json.dumps(result), result.get("error_kind"),
                              result.get("thread_id"), task_id))
            if task["chat_key"] and result.get("thread_id"):
                await self._bind_result(db, task, result["thread_id"], now)
            # Nobody waits on them any more: withdrawn with the task, not expired (no timer ran out).
            withdrawn = await fetch(db, "SELECT approval_id FROM approvals WHERE task_id = ? AND state = ?",
                                    (task_id, ApprovalState.PENDING))
            await db.execute("UPDATE approvals SET state = ?, decided_by = 'task_ended', decided_at = ? "
                             "WHERE task_id = ? AND state = ?",
                             (ApprovalState.WITHDRAWN, now, task_id, ApprovalState.PENDING))
        return {**task, "state": state.value, "result": result,
                "withdrawn_approvals": [r["approval_id"] for r in withdrawn]}

    async def open_tasks(self, node_id: str | None = None, chat_key: str | None = None) -> list[dict[str, Any]]:
        """Tasks not yet final, oldest first."""
        sql = f"SELECT task_id, trace_id, node_id, chat_key, state, deadline FROM tasks WHERE state NOT IN {FINAL_SQL}"
        where = {k: v for k, v in (("node_id", node_id), ("chat_key", chat_key)) if v}
        return await self.query(sql + "".join(f" AND {k} = ?" for k in where) + " ORDER BY created_at",
                                tuple(where.values()))

    # ---- numbered events --------------------------------------------------------------------
    async def add_event(self, event: EventFrame) -> bytes:
        """Number the event, keep it, and return its frame. Numbers follow commit order, and the caller
        publishes before its next await, so subscribers see them in order."""
        async with self.tx("add_event") as db:
            event.seq = self.last_seq + 1
            frame = encode_bytes(event)
            await db.execute("INSERT INTO events VALUES (?, ?, ?)", (event.seq, frame, event.ts))
        self.last_seq = event.seq
        return frame

    async def events_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        rows = await self.query("SELECT seq, frame FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return [(r["seq"], bytes(r["frame"])) for r in rows]

    async def open_task_counts(self) -> dict[str, int]:
        """Tasks not yet final, by state: read off the partial index, so it costs the same with a million done."""
        rows = await self.query(f"SELECT state, COUNT(*) AS n FROM tasks WHERE state NOT IN {FINAL_SQL} GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    async def prune(self, before: float, batch: int) -> tuple[int, int]:
        """Delete up to `batch` finished tasks and decided approvals last changed before `before`."""
        async with self.tx("prune") as db:
            tasks = await db.execute(f"DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM tasks WHERE state IN "
                                     f"{FINAL_SQL} AND updated_at < ? LIMIT ?)", (before, batch))
            approvals = await db.execute("DELETE FROM approvals WHERE approval_id IN (SELECT approval_id FROM "
                                         "approvals WHERE decided_at IS NOT NULL AND decided_at < ? LIMIT ?)",
                                         (before, batch))
            await db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE at < ? ORDER BY seq "
                             "LIMIT ?)", (before, batch))
        return tasks.rowcount, approvals.rowcount

    async def task_counts(self) -> dict[str, int]:
        rows = await self.query("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state")
        return {r["state"]: r["n"] for r in rows}

    # ---- approvals -------------------------------------------------------------------------
    async def add_approval(self, node_id: str, approval: ApprovalRequest) -> bool:
        async with self.tx("add_approval") as db:
            cur = await db.execute(
                "INSERT INTO approvals (approval_id, node_id, task_id, trace_id, payload, state, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (approval_id) DO NOTHING",
                (approval.approval_id, node_id, approval.task_id, approval.trace_id,
                 encode(approval), ApprovalState.PENDING, time.time()))
            return cur.rowcount == 1

    async def decide_approval(self, approval_id: str, state: ApprovalState, decision: str | None,
                              decided_by: str | None) -> bool:
        """True only for the one call that moved the approval out of pending."""
        async with self.tx("decide_approval") as db:
            cur = await db.execute("UPDATE approvals SET state = ?, decision = ?, decided_by = ?, decided_at = ? "
                                   "WHERE approval_id = ? AND state = ?",
                                   (state, decision, decided_by, time.time(), approval_id, ApprovalState.PENDING))
            return cur.rowcount == 1

    async def approval(self, approval_id: str) -> dict[str, Any] | None:
        rows = await self.query("SELECT * FROM approvals WHERE approval_id = ?", (approval_id,))
        return _approval_view(rows[0]) if rows else None

    async def list_approvals(self, state: ApprovalState | None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM approvals" + (" WHERE state = ?" if state else "") + " ORDER BY created_at"
        return [_approval_view(r) for r in await self.query(sql, (state,) if state else ())]

    # ---- users (the bot's allowlist, kept by the manager) -----------------------------------
    async def list_users(self) -> list[dict[str, Any]]:
        return await self.query("SELECT user_id, role FROM users ORDER BY user_id")

    async def set_user(self, user_id: int, role: str | None) -> None:
        async with self.tx("set_user") as db:
            if role is None:
                await db.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            else:
                await db.execute("INSERT INTO users VALUES (?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
                                 "role = excluded.role", (user_id, role, time.time()))


def _approval_view(row: dict[str, Any]) -> dict[str, Any]:
    payload = json.loads(row.pop("payload"))
    payload.pop("type", None)
    return {**payload, **row}
