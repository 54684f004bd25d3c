"""Plain text as a Codex turn: a placeholder at once, throttled progress edits (the agent's text and, by the chat's
/verbose, its commands, files and tool calls), then the one final answer: posted anew or edited in (/result).

The bot picks the task_id, so progress and result events can be matched to the placeholder, and a dispatch
whose answer was lost (manager restart mid-turn) can be asked again safely: the manager never runs a
task_id twice, it answers with what the first run became. The turns in hand are journaled on disk
(journal.py), so a restarted bot resumes them the same way and shows each outcome once, in its placeholder.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import html
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.bot import formatting, render
from runtime.bot.config import BotConfig
from runtime.bot.context import Req, chat_id_of, chat_key
from runtime.bot.delivery import Delivery
from runtime.bot.journal import Entry, Journal
from runtime.bot.manager_client import ManagerClient, MaybeDelivered
from runtime.aiotasks import Background
from runtime.backoff import Backoff
from runtime.logfmt import log
from runtime.protocol import Api, ErrorKind, RelayError, TaskAction, new_id, parse_kind
from runtime.protocol.api import DEFAULT_RESULT_MODE, DEFAULT_VERBOSE
from runtime.throttle import Throttle

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
    action: TaskAction = TaskAction.TURN
    verbose: int = DEFAULT_VERBOSE          # the chat's settings when the turn started
    result_mode: str = DEFAULT_RESULT_MODE
    started: float = field(default_factory=time.monotonic)
    shown: str = ""
    done: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    progress: dict[str, Any] = field(default_factory=dict)  # the latest progress event: text, activity, earlier
    edits: Throttle | None = None                           # paces the progress edits (progress_interval)


class Turns:
    def __init__(self, config: BotConfig, manager: ManagerClient, delivery: Delivery, journal: Journal) -> None:
        self.config = config
        self.manager = manager
        self.delivery = delivery
        self.journal = journal  # turns in hand and recently shown, on disk: a restart resumes, never repeats
        self.active: dict[str, Turn] = {}
        self.tasks = Background(logger)

    async def start(self, req: Req, node_id: str, text: str, chat: dict[str, Any],
                    action: TaskAction = TaskAction.TURN, images: list[str] | None = None) -> None:
        """Answer with the placeholder now; the turn itself (or codex's review or compaction) runs in the background.
        `chat`: its settings."""
        asked, task_id = time.monotonic(), new_id("task")
        # Journaled before the placeholder: from the user's first sight of it, a crash resumes the turn. Only a plain
        # text turn is resumed that way (the journal keeps its text); a review, a compaction or a photo is not.
        if action == TaskAction.TURN and not images:
            self.journal.begin(Entry(task_id, req.chat_id, req.user_id, node_id, req.trace_id, text, time.time()))
        sent = await self.delivery.send(req.chat_id, render.placeholder(node_id, action), render.stop_button(task_id),
                                        trace_id=req.trace_id)
        turn = Turn(task_id, req.chat_id, req.user_id, node_id, req.trace_id, sent.message_id if sent else None,
                    action, verbose=int(chat.get("verbose", DEFAULT_VERBOSE)),
                    result_mode=str(chat.get("result_mode") or DEFAULT_RESULT_MODE))
        self.journal.placed(task_id, turn.message_id)
        turn.shown = render.placeholder(node_id, action)
        # Sending the placeholder counts as its first write: its first edit comes progress_interval later.
        turn.edits = Throttle(self.config.progress_interval, lambda: self._edit_progress(turn), self.tasks,
                              f"progress:{task_id}", last=time.monotonic())
        self.active[turn.task_id] = turn
        log(logger, logging.INFO, "turn_started", chat_id=req.chat_id, user_id=req.user_id, node_id=node_id,
            task_id=turn.task_id, trace_id=req.trace_id, placeholder_ms=round((turn.started - asked) * 1000))
        self.tasks.spawn(self._run(turn, text, images), f"turn:{turn.task_id}")

    def resume(self) -> int:
        """The turns a previous process had in hand: each asks the manager again under its task_id and shows its
        outcome in its placeholder, within what is left of its deadline. Call before the event stream starts, so a
        replayed result finds its turn here instead of being sent as a new message."""
        for e in [e for e in self.journal.open.values() if e.task_id not in self.active]:
            turn = Turn(e.task_id, e.chat_id, e.user_id, e.node_id, e.trace_id, e.message_id,
                        started=time.monotonic() - max(0.0, time.time() - e.started_at), result_mode="replace")
            turn.shown = render.placeholder(e.node_id)
            turn.edits = Throttle(self.config.progress_interval, functools.partial(self._edit_progress, turn),
                                  self.tasks, f"progress:{e.task_id}", last=time.monotonic())
            self.active[turn.task_id] = turn
            log(logger, logging.INFO, "turn_resumed", chat_id=e.chat_id, node_id=e.node_id, task_id=e.task_id,
                trace_id=e.trace_id, age_s=round(time.time() - e.started_at, 1))
            self.tasks.spawn(self._run(turn, e.text), f"turn:{turn.task_id}")
        return len(self.journal.open)

    async def _run(self, turn: Turn, text: str, images: list[str] | None = None) -> None:
        deadline = turn.started + self.config.turn_timeout
        body: dict[str, Any] = {"chat_key": chat_key(turn.chat_id), "text": text, "node_id": turn.node_id,
                                "task_id": turn.task_id, "action": turn.action.value}
        if images:
            body["images"] = images
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
            await self.delivery.edit(turn.chat_id, turn.message_id, turn.shown, render.stop_button(turn.task_id),
                                     trace_id=turn.trace_id)
        log(logger, logging.WARNING, "turn_waiting_for_manager", chat_id=turn.chat_id, task_id=turn.task_id,
            trace_id=turn.trace_id)

    async def on_progress(self, event: dict[str, Any]) -> None:
        turn = self.active.get(str(event.get("task_id")))
        if turn is None or turn.message_id is None or turn.edits is None:
            return
        turn.progress = event
        # Edited now, or once progress_interval has passed since the last edit, with the latest: the last retry
        # notice or step inside an interval is shown at its end, not lost.
        turn.edits.poke()

    async def _edit_progress(self, turn: Turn) -> None:
        async with turn.lock:
            p = turn.progress
            text = (render.queued(turn.node_id) if p.get("queued") else
                    render.progress(turn.node_id, str(p.get("text") or ""), p.get("activity"),
                                    int(p.get("earlier") or 0), turn.verbose, p.get("notice")))
            if turn.done or text == turn.shown or turn.message_id is None:
                return
            turn.shown = text
            # The Stop button stays while the turn runs: an edit without it would take it away.
            await self.delivery.edit(turn.chat_id, turn.message_id, text, render.stop_button(turn.task_id),
                                     trace_id=turn.trace_id)

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
        if result.get("ok"):
            await self._deliver(chat_id, task_id, None, answer(result, self.config.answer_max_parts), None)
        else:
            await self.delivery.send(chat_id, render.failure("Codex turn", str(result.get("error_kind") or "internal"),
                                                             result.get("error")))
        self.journal.finish(task_id)
        log(logger, logging.INFO, "turn_final_orphan", chat_id=chat_id, task_id=task_id, ok=bool(result.get("ok")))

    async def finish(self, turn: Turn, result: dict[str, Any]) -> None:
        if turn.action == TaskAction.COMPACT:
            out = formatting.Answer([formatting.plain_part(render.COMPACTED)])
        elif turn.action == TaskAction.REVIEW:
            out = answer({**result, "text": render.review(str(result.get("text") or ""))}, self.config.answer_max_parts)
        else:
            out = answer(result, self.config.answer_max_parts)
        await self._final(turn, out, ok=True, in_place=bool(result.get("steered_into")))

    async def fail(self, turn: Turn, err: RelayError) -> None:
        failed = formatting.Answer([formatting.plain_part(render.failure("Codex turn", err.kind, err.error))])
        await self._final(turn, failed, ok=False, error_kind=err.kind)

    async def _final(self, turn: Turn, answer: formatting.Answer, ok: bool, error_kind: str | None = None,
                     in_place: bool = False) -> None:
        """Show the outcome exactly once. `replace` (and a stop, the user's own act, or a note that the message
        steered the running turn: `in_place`) edits it into the placeholder and sends the rest; `send` posts it
        anew, so Telegram notifies, and closes the placeholder as a record."""
        async with turn.lock:
            if turn.done:
                return
            turn.done = True
            if turn.edits is not None:
                await turn.edits.close()
            self.journal.remember(turn.task_id)  # before leaving `active`: its result event must not look orphaned
            self.active.pop(turn.task_id, None)
            # Editing is safe to repeat (a resumed turn may edit in what its crashed predecessor already had); a
            # resumed turn therefore shows its outcome in place (result_mode replace).
            if (turn.result_mode == "send" and turn.message_id is not None and error_kind != ErrorKind.CANCELLED
                    and not in_place):
                await self._post(turn, answer, ok)
            else:
                await self._deliver(turn.chat_id, turn.task_id, turn.message_id, answer, turn.trace_id)
            self.journal.finish(turn.task_id)  # shown: only now is the turn off the disk
        log(logger, logging.INFO, "turn_final", chat_id=turn.chat_id, user_id=turn.user_id, node_id=turn.node_id,
            task_id=turn.task_id, trace_id=turn.trace_id, ok=ok, error_kind=error_kind,
            ms=round((time.monotonic() - turn.started) * 1000))

    async def _deliver(self, chat_id: int, task_id: str, message_id: int | None, answer: formatting.Answer,
                       trace_id: str | None) -> None:
        """The first part edited into the placeholder (sent, without one), the rest sent; then the document."""
        parts = answer.parts
        if message_id is not None and await self.delivery.edit(chat_id, message_id, parts[0], trace_id=trace_id):
            parts = parts[1:]
        for part in parts:
            await self.delivery.send(chat_id, part, trace_id=trace_id)
        await self._document(chat_id, task_id, answer, trace_id)

    async def _document(self, chat_id: int, task_id: str, answer: formatting.Answer, trace_id: str | None) -> None:
        if answer.document is not None:
            await self.delivery.document(chat_id, render.answer_document(task_id), answer.document,
                                         render.answer_caption(len(answer.document.decode()), answer.total_parts),
                                         trace_id=trace_id)

    async def _post(self, turn: Turn, answer: formatting.Answer, ok: bool) -> None:
        """/result send: every part as a new message, then the document, then the placeholder closed."""
        assert turn.message_id is not None
        if await self.delivery.send(turn.chat_id, answer.parts[0], trace_id=turn.trace_id) is None:
            # Refused, or its fate unknown (rare: telegram_timeout is long): the placeholder carries it instead,
            # so an answer is never lost.
            await self._deliver(turn.chat_id, turn.task_id, turn.message_id, answer, turn.trace_id)
            return
        for part in answer.parts[1:]:
            await self.delivery.send(turn.chat_id, part, trace_id=turn.trace_id)
        await self._document(turn.chat_id, turn.task_id, answer, turn.trace_id)
        p = turn.progress
        if turn.edits is not None:  # the answer went at once; the closing edit keeps Telegram's edit spacing
            await asyncio.sleep(turn.edits.due_in())
        await self.delivery.edit(turn.chat_id, turn.message_id, render.finished(
            turn.node_id, list(p.get("activity") or []), int(p.get("earlier") or 0), turn.verbose, ok),
            trace_id=turn.trace_id)

    async def close(self) -> None:
        await self.tasks.close()


def answer(result: dict[str, Any], max_parts: int) -> formatting.Answer:
    """Codex's answer in Telegram-sized parts (or a document), the turn's token usage under it, then what the node
    refused for the user in the turn."""
    if result.get("steered_into"):
        return formatting.Answer([formatting.plain_part(render.STEERED)])  # the running turn's answer answers it
    out = formatting.answer(str(result.get("text") or ""), max_parts)
    if result.get("usage"):
        line, last = render.usage(result["usage"]), out.parts[-1]
        # Under the answer's last message when it fits there (Telegram counts the text after parsing), else alone.
        tail = ([formatting.Part(f"{last.html}\n\n{html.escape(line, quote=False)}", f"{last.plain}\n\n{line}")]
                if len(last.plain) + len(line) + 2 <= formatting.MAX_TEXT else [last, formatting.plain_part(line)])
        out = dataclasses.replace(out, parts=[*out.parts[:-1], *tail])
    if notes := [str(n) for n in result.get("notes") or []]:
        out = dataclasses.replace(out, parts=[*out.parts, formatting.plain_part(render.notes(notes)[:formatting.MAX_TEXT])])
    return out
