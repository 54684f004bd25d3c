"""R-05: a manager that runs for weeks: retention prunes what is old, /metrics reads no finished task, and a
live DB can be backed up."""
from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

from harness.stack.stack import Stack
from runtime.backoff import Backoff
from runtime.protocol import Api, new_id

# About 2.6 s of retention, and sweeps often enough that a pass comes within the case.
STACK_MANAGER_ARGS = {"retention-days": 0.00003, "sweep-interval": 0.2}
TURNS = 3


@pytest.mark.case("R-05")
async def test_retention_metrics_and_live_backup(stack: Stack, tmp_path: Path) -> None:
    """finished tasks are pruned past retention; /metrics counts no finished rows; backup copies a live DB"""
    await stack.add_node("r5")
    run = new_id("r05")
    done = [await stack.result(Api.DISPATCH, {"node_id": "r5", "prompt": f"{run} {i}", "timeout": 60})
            for i in range(TURNS)]
    assert all(r["ok"] for r in done), done
    ids = [str(r["task_id"]) for r in done]

    # A copy of the live DB, while the manager keeps writing: complete, consistent, and holding those tasks.
    copy = tmp_path / "backup.sqlite3"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "runtime.manager.main", "backup", str(copy),
                                                "--db", str(stack.db_path), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and b"op=backup_done" in out, out.decode(errors="replace")
    with sqlite3.connect(copy) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        held = {row[0] for row in db.execute("SELECT task_id FROM tasks")}
    assert set(ids) <= held, (ids, held)

    # Past retention the sweep deletes them, prompts and all.
    gone: list[str] = []
    async for _ in Backoff(0.5, factor=1).tries(20):
        gone = [t for t in ids if (await stack.request("GET", Api.TASKS, {"task_id": t}))[1]["result"].get(
            "error_kind") == "not_found"]
        if len(gone) == TURNS:
            break
    assert gone == ids, f"not pruned within 20 s: {sorted(set(ids) - set(gone))}"
    assert await stack.metric("pruned_tasks") >= TURNS
    # Finished tasks are counted as they finish (relay_events_total), never by reading the table.
    assert await stack.metric("tasks_done") >= TURNS
    with pytest.raises(AssertionError, match="no series"):
        await stack.gauge('relay_tasks{state="done"}')

    # The manager goes on as before.
    after = await stack.result(Api.DISPATCH, {"node_id": "r5", "prompt": f"{run} after", "timeout": 60})
    assert after["ok"], after
