"""Plain text as a Codex turn: a placeholder at once, throttled progress edits, then the one final answer.

The bot picks the task_id, so progress and result events can be matched to the placeholder, and a dispatch
whose answer was lost (manager restart mid-turn) can be asked again safely: the manager never runs a
task_id twice, it answers with what the first run became. The turns in hand are journaled on disk
(journal.py), so a restarted bot resumes them the same way and shows each outcome once, in its placeholder.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.bot import render
from runtime.bot.config import BotConfig
from runtime.bot.context import Req, chat_id_of, chat_key
from runtime.bot.delivery import Delivery
from runtime.bot.journal import Entry, Journal
from runtime.bot.manager_client import ManagerClient, MaybeDelivered
from runtime.aiotasks import Background
from runtime.backoff import Backoff
from runtime.logfmt import log
from runtime.protocol import Api, ErrorKind, RelayError, new_id, parse_kind

logger = logging.getLogger("codex_bot.turns")

HTTP_MARGIN = 10.0      # the HTTP wait outlives the manager's own deadline, so the manager reports the timeout
RETRY_FIRST, RETRY_CAP = 1.0, 10.0
LOST_NOTE = "\n\n(The connection to the manager was lost; the answer will follow once it is back.)"


@dataclass
class Turn:
    task_id: str
    chat_id: int
    user_id: int
    node_id: str
    trace_id: str
    message_id: int | None
    started: float = field(default_factory=time.monotonic)
    last_edit: float = field(default_factory=time.monotonic)
    shown: str = ""
    done: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Turns:
    def __init__(self, config: BotConfig, manager: ManagerClient, delivery: Delivery, journal: Journal) -> None:
        self.config = config
        self.manager = manager
        self.delivery = delivery
        self.journal = journal  # turns in hand and recently shown, on disk: a restart resumes, never repeats
        self.active: dict[str, Turn] = {}
        self.tasks = Background(logger)

    async def start(self, req: Req, node_id: str, text: str) -> None:
        """Answer with the placeholder now; the turn itself runs in the background."""
        asked = time.monotonic()
        task_id = new_id("task")
        # Journaled before the placeholder: from the user's first sight of it, a crash resumes the turn.
        self.journal.begin(Entry(task_id, req.chat_id, req.user_id, node_id, req.trace_id, text, time.time()))
        sent = await self.delivery.send(req.chat_id, render.placeholder(node_id), trace_id=req.trace_id)
        turn = Turn(task_id, req.chat_id, req.user_id, node_id, req.trace_id, sent.message_id if sent else None)
        self.journal.placed(task_id, turn.message_id)
        turn.shown = render.placeholder(node_id)
        self.active[turn.task_id] = turn
        log(logger, logging.INFO, "turn_started", chat_id=req.chat_id, user_id=req.user_id, node_id=node_id,
            task_id=turn.task_id, trace_id=req.trace_id, placeholder_ms=round((turn.started - asked) * 1000))
        self.tasks.spawn(self._run(turn, text), f"turn:{turn.task_id}")

    def resume(self) -> int:
        """The turns a previous process had in hand: each asks the manager again under its task_id and shows its
        outcome in its placeholder, within what is left of its deadline. Call before the event stream starts, so a
        replayed result finds its turn here instead of being sent as a new message."""
        for e in [e for e in self.journal.open.values() if e.task_id not in self.active]:
            turn = Turn(e.task_id, e.chat_id, e.user_id, e.node_id, e.trace_id, e.message_id,
                        started=time.monotonic() - max(0.0, time.time() - e.started_at))
            turn.shown = render.placeholder(e.node_id)
            self.active[turn.task_id] = turn
            log(logger, logging.INFO, "turn_resumed", chat_id=e.chat_id, node_id=e.node_id, task_id=e.task_id,
                trace_id=e.trace_id, age_s=round(time.time() - e.started_at, 1))
            self.tasks.spawn(self._run(turn, e.text), f"turn:{turn.task_id}")
        return len(self.journal.open)

    async def _run(self, turn: Turn, text: str) -> None:
        deadline = turn.started + self.config.turn_timeout
        body = {"chat_key": chat_key(turn.chat_id), "text": text, "node_id": turn.node_id, "task_id": turn.task_id}
        lost, backoff = False, Backoff(RETRY_FIRST, 2.0, RETRY_CAP, jitter=0.2)
        while not turn.done:
            remaining = deadline - time.monotonic()
            try:
                result = await self.manager.post(Api.DISPATCH_TEXT, turn.trace_id, {**body, "timeout": max(remaining, 1)},
                                                 timeout=max(remaining, 1) + HTTP_MARGIN)
                await self.finish(turn, result)
            except RelayError as err:
                # Once a dispatch may have reached the manager, only the deadline ends the wait for its result.
                lost = lost or isinstance(err, MaybeDelivered)
                if not lost or err.kind not in (ErrorKind.MANAGER_UNAVAILABLE, ErrorKind.TIMEOUT) or remaining <= 0:
                    await self.fail(turn, err)
                    return
                await self._note_lost(turn)
                await backoff.sleep(max(remaining, 0.1))

    async def _note_lost(self, turn: Turn) -> None:
        async with turn.lock:
            if turn.done or turn.message_id is None or turn.shown.endswith(LOST_NOTE):
                return
            turn.shown += LOST_NOTE
            await self.delivery.edit(turn.chat_id, turn.message_id, turn.shown, trace_id=turn.trace_id)
        log(logger, logging.WARNING, "turn_waiting_for_manager", chat_id=turn.chat_id, task_id=turn.task_id,
            trace_id=turn.trace_id)

    async def on_progress(self, event: dict[str, Any]) -> None:
        turn = self.active.get(str(event.get("task_id")))
        if turn is None or turn.message_id is None:
            return
        async with turn.lock:
            text = render.progress(turn.node_id, str(event.get("text") or ""))
            # Throttled: skipped progress is not lost, the next event or the final answer carries it.
            if turn.done or text == turn.shown or time.monotonic() - turn.last_edit < self.config.progress_interval:
                return
            turn.last_edit, turn.shown = time.monotonic(), text
            await self.delivery.edit(turn.chat_id, turn.message_id, text, trace_id=turn.trace_id)

    async def on_result(self, event: dict[str, Any]) -> None:
        """A result event: the same answer the dispatch call gives, and the only one after a lost call."""
        task_id, result = str(event.get("task_id")), event.get("result") or {}
        turn = self.active.get(task_id)
        if turn is None:
            await self._orphan(task_id, chat_id_of(event.get("chat_key")), result)
            return
        if result.get("ok"):
            await self.finish(turn, result)
        else:
            await self.fail(turn, RelayError(parse_kind(result.get("error_kind")), result.get("error")))

    async def _orphan(self, task_id: str, chat_id: int | None, result: dict[str, Any]) -> None:
        """A chat's turn this bot has no record of (its journal was lost, or the turn was dispatched by another front
        end under a Telegram chat_key): its placeholder is unknown, so the answer is sent."""
        if chat_id is None or self.journal.shown(task_id):
            return
        self.journal.remember(task_id)
        parts = (render.chunks(str(result.get("text") or "")) if result.get("ok") else
                 [render.failure("Codex turn", str(result.get("error_kind") or "internal"), result.get("error"))])
        for part in parts:
            await self.delivery.send(chat_id, part)
        self.journal.finish(task_id)
        log(logger, logging.INFO, "turn_final_orphan", chat_id=chat_id, task_id=task_id, ok=bool(result.get("ok")))

    async def finish(self, turn: Turn, result: dict[str, Any]) -> None:
        await self._final(turn, render.chunks(str(result.get("text") or "")), ok=True)

    async def fail(self, turn: Turn, err: RelayError) -> None:
        await self._final(turn, [render.failure("Codex turn", err.kind, err.error)], ok=False, error_kind=err.kind)

    async def _final(self, turn: Turn, parts: list[str], ok: bool, error_kind: str | None = None) -> None:
        """Show the outcome exactly once: edited into the placeholder, the rest (or all, without one) sent."""
        async with turn.lock:
            if turn.done:
                return
            turn.done = True
            self.journal.remember(turn.task_id)  # before leaving `active`: its result event must not look orphaned
            self.active.pop(turn.task_id, None)
            first, rest = parts[0], parts[1:]
            # Editing is safe to repeat (a resumed turn may edit in what its crashed predecessor already had);
            # sending is not, so the rest of a long answer could show twice if the bot dies between its parts.
            if turn.message_id is None or not await self.delivery.edit(turn.chat_id, turn.message_id, first,
                                                                       trace_id=turn.trace_id):
                rest = parts
            for part in rest:
                await self.delivery.send(turn.chat_id, part, trace_id=turn.trace_id)
            self.journal.finish(turn.task_id)  # shown: only now is the turn off the disk
        log(logger, logging.INFO, "turn_final", chat_id=turn.chat_id, user_id=turn.user_id, node_id=turn.node_id,
            task_id=turn.task_id, trace_id=turn.trace_id, ok=ok, error_kind=error_kind,
            ms=round((time.monotonic() - turn.started) * 1000))

    async def close(self) -> None:
        await self.tasks.close()
