"""Gathers the evidence the exactly-once checker needs from a live stack, once the faults have cleared:
the mock model's serve count per prompt, the manager's DB row per task, its `task_final` log lines, and for
turns sent through the bot, what each chat shows in the fake Bot API and the task ids the bot started there.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import aiohttp

from harness.checkers.checkers import Evidence
from harness.history.history import History, Op, Resolution
from harness.load.steady import Client
from harness.stack.procs import log_fields
from harness.stack.stack import Stack
from runtime.backoff import Backoff
from runtime.protocol import Api

LOOKUPS_IN_FLIGHT = 8


async def settle(client: Client, timeout_s: float) -> list[str]:
    """Wait until the manager holds no open task (bounded); returns those still open at the end."""
    still: list[str] = []
    async for _ in Backoff(0.5, factor=1).tries(timeout_s):
        try:
            _, env = await client.call("GET", Api.TASKS, {}, 10)
        except (TimeoutError, aiohttp.ClientError, ValueError):
            continue  # the manager is still coming back
        still = [t["task_id"] for t in env["result"]["open"]]
        if not still:
            return []
    return still


async def gather(stack: Stack, client: Client, ops: list[Op]) -> Evidence:
    stats = await stack.upstream("GET", "/_mock/stats")
    sem = asyncio.Semaphore(LOOKUPS_IN_FLIGHT)

    async def row(task_id: str) -> tuple[str, dict[str, object] | None]:
        async with sem:
            _, env = await client.call("GET", Api.TASKS, {"task_id": task_id}, 30)
        result = env.get("result") or {}
        if not result.get("ok"):
            return task_id, None  # not_found: the manager never stored it
        task = result["task"]
        return task_id, {"state": task["state"], "error_kind": task.get("error_kind"), "at": task.get("updated_at"),
                         "text": (task.get("result") or {}).get("text")}

    chats, chat_tasks = await _chats(stack, [o.chat_id for o in ops if o.chat_id is not None])
    ids = sorted({o.task_id for o in ops if o.task_id} | {t for ts in chat_tasks.values() for t in ts})
    rows = dict(await asyncio.gather(*(row(t) for t in ids)))
    finals: dict[str, int] = {}
    for line in stack.procs["manager"].log_lines("task_final"):
        if task_id := log_fields(line).get("task_id"):
            finals[task_id] = finals.get(task_id, 0) + 1
    return Evidence(serves={k: int(v) for k, v in stats["serves"].items()},
                    tasks={k: v for k, v in rows.items() if v is not None},
                    finals={t: finals.get(t, 0) for t in ids}, node_ok=node_ok(stack, set(ids)),
                    chats=chats, chat_tasks=chat_tasks)


async def _chats(stack: Stack, chat_ids: list[int]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Each chat op's chat as its user sees it (the bot's messages, latest text), and the distinct task ids the bot
    logged starting there (`op=turn_started`, or `op=turn_resumed` by a restarted bot that took over the turn),
    across every bot process of the run: its log is appended across restarts."""
    if not chat_ids or stack.telegram is None:
        return {}, {}
    wanted = {str(c) for c in chat_ids}
    tasks: dict[str, list[str]] = {}
    for line in stack.procs["bot"].log_lines():
        fields = log_fields(line)
        if fields.get("op") in ("turn_started", "turn_resumed") and fields.get("chat_id") in wanted \
                and (task_id := fields.get("task_id")) and task_id not in tasks.get(fields["chat_id"], []):
            tasks.setdefault(fields["chat_id"], []).append(task_id)
    sem = asyncio.Semaphore(LOOKUPS_IN_FLIGHT)

    async def shown(chat_id: int) -> tuple[str, list[str]]:
        assert stack.telegram is not None
        async with sem:
            messages = (await stack.telegram.get(f"chat/{chat_id}"))["messages"]
        return str(chat_id), [m["text"] for m in messages if m.get("from_bot")]

    return dict(await asyncio.gather(*(shown(c) for c in sorted(set(chat_ids))))), tasks


def node_ok(stack: Stack, ids: set[str]) -> dict[str, float]:
    """When each node logged a task finished ok: a node's word that the work was done."""
    out: dict[str, float] = {}
    nodes = {o for o in stack.node_settings}
    for name in nodes:
        for line in stack.procs[name].log_lines("task_final"):
            fields = log_fields(line)
            if fields.get("task_id") in ids and fields.get("ok") == "True" and "ts" in fields:
                stamp = fields["ts"].replace("Z", "+00:00")
                out[fields["task_id"]] = datetime.fromisoformat(stamp).timestamp()
    return out


def resolve(history: History, ev: Evidence) -> None:
    """Settle every unknown op in the history from the DB: Jepsen's `info`, completed after recovery."""
    for op in history.ops:
        task_id = op.task_id or next(iter(ev.chat_tasks.get(str(op.chat_id), [])), None)
        if op.outcome == "unknown" and task_id:
            row = ev.tasks.get(task_id)
            history.add(Resolution(op.op_id, task_id, row["state"] if row else "absent",
                                   row.get("error_kind") if row else None))


def save(ev: Evidence, path: Path) -> None:
    path.write_text(json.dumps(asdict(ev)))


def load(path: Path) -> Evidence:
    return Evidence(**json.loads(path.read_text()))
