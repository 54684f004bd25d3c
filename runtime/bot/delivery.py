"""Every Bot API call the bot makes: bounded retries, one rate limiter across chats, and no duplicates.

PTB never retries a failed call, so this module does. The exactly-once rule:
- a call is repeated only when it provably did not take effect (429 RetryAfter, an HTTP 5xx answered by
  the server, a connection that never opened, a wait for a pooled connection), or when repeating it is
  harmless (edits, where "message is not modified" counts as done; callback answers);
- a sendMessage whose fate is unknown (the request was written but the answer was lost: read timeout,
  connection dropped) is never repeated. Telegram has no idempotency key, so a repeat could show the user
  the same message twice; it is logged as op=tg_send_unknown and reported as not delivered instead.
Long call timeouts (telegram_timeout) keep that unknown case rare.

Formatted text (a `formatting.Part`) goes with parse_mode HTML. Should Telegram ever answer "can't parse
entities", the same call goes again at once with the part's plain text: the refusal proves the first did not
take effect, and the answer is never lost for its formatting (op=tg_parse_fallback).
"""
from __future__ import annotations

import asyncio
import datetime as dtm
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from aiolimiter import AsyncLimiter
from telegram import Bot, InlineKeyboardMarkup, InputFile, Message
from telegram.constants import ParseMode
from telegram.error import BadRequest, NetworkError, RetryAfter, TelegramError, TimedOut

from runtime.backoff import Backoff
from runtime.bot.formatting import Part
from runtime.logfmt import log

logger = logging.getLogger("codex_bot.delivery")

T = TypeVar("T")
MAX_TEXT = 4096
MAX_CAPTION = 1024
OVERALL_PER_SECOND = 30      # Telegram's broadcast limit for one bot
GROUP_PER_MINUTE = 20        # Telegram's limit for one group chat
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 8.0
SAFE, UNKNOWN, FINAL = "safe", "unknown", "final"


def classify(exc: TelegramError) -> str:
    """SAFE: provably not applied, repeat it. UNKNOWN: may have been applied. FINAL: repeating cannot help."""
    cause = exc.__cause__
    if isinstance(exc, RetryAfter):
        return SAFE
    if isinstance(exc, TimedOut):
        return SAFE if isinstance(cause, httpx.ConnectTimeout | httpx.PoolTimeout) else UNKNOWN
    if isinstance(exc, BadRequest) or not isinstance(exc, NetworkError):
        return FINAL  # 400, 401/403/404, 409: Telegram refused it and would refuse it again
    if isinstance(cause, httpx.ConnectError):
        return SAFE
    # Another transport error happened after the request was written; no cause means the server answered 5xx.
    return UNKNOWN if cause is not None else SAFE


def _retry_after(exc: RetryAfter) -> float:
    value: Any = exc.retry_after
    return value.total_seconds() if isinstance(value, dtm.timedelta) else float(value)


def fit(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unparsable(exc: BadRequest) -> bool:
    return "can't parse entities" in exc.message.lower()


class Delivery:
    def __init__(self, bot: Bot, attempts: int) -> None:
        self.bot = bot
        self.attempts = attempts
        self._overall = AsyncLimiter(OVERALL_PER_SECOND, 1)
        self._groups: dict[int, AsyncLimiter] = {}
        self._paused_until = 0.0  # a 429 pauses every chat: Telegram's flood wait is per bot

    async def send(self, chat_id: int, text: str | Part, markup: InlineKeyboardMarkup | None = None,
                   trace_id: str | None = None) -> Message | None:
        """The sent message, or None if it was refused or its fate is unknown (never sent twice)."""
        async def call(body: str, parse_mode: str | None) -> Message:
            return await self.bot.send_message(chat_id, body, parse_mode=parse_mode, reply_markup=markup)
        return await self._run("sendMessage", chat_id, trace_id, repeatable=False,
                               call=lambda: self._formatted("sendMessage", chat_id, trace_id, text, call))

    async def edit(self, chat_id: int, message_id: int, text: str | Part, markup: InlineKeyboardMarkup | None = None,
                   trace_id: str | None = None) -> bool:
        """True once the message shows `text` (and `markup`; None removes the buttons)."""
        async def call(body: str, parse_mode: str | None) -> Message | bool:
            return await self.bot.edit_message_text(body, chat_id=chat_id, message_id=message_id,
                                                    parse_mode=parse_mode, reply_markup=markup)
        result = await self._run("editMessageText", chat_id, trace_id, repeatable=True,
                                 call=lambda: self._formatted("editMessageText", chat_id, trace_id, text, call))
        return result is not None

    async def document(self, chat_id: int, filename: str, data: bytes, caption: str,
                       trace_id: str | None = None) -> Message | None:
        """A file as a document (multipart upload); like a message, never sent twice."""
        return await self._run("sendDocument", chat_id, trace_id, repeatable=False, call=lambda: self.bot.send_document(
            chat_id, InputFile(data, filename=filename), caption=fit(caption, MAX_CAPTION)))

    @staticmethod
    async def _formatted(method: str, chat_id: int, trace_id: str | None, text: str | Part,
                         call: Callable[[str, str | None], Awaitable[T]]) -> T:
        """Plain text as it is; a Part as HTML, and as its plain text if Telegram cannot parse the HTML."""
        if not isinstance(text, Part):
            return await call(fit(text), None)
        try:
            return await call(text.html, ParseMode.HTML)
        except BadRequest as exc:
            if not unparsable(exc):
                raise
            log(logger, logging.WARNING, "tg_parse_fallback", method=method, chat_id=chat_id, trace_id=trace_id,
                error=exc.message, rule="sent again as plain text, so the answer is not lost")
            return await call(fit(text.plain), None)

    async def answer(self, query_id: str, text: str | None = None, alert: bool = False, chat_id: int | None = None,
                     trace_id: str | None = None) -> bool:
        # Telegram caps callback answers at 200 characters.
        short = text if text is None or len(text) <= 200 else text[:199] + "…"
        result = await self._run("answerCallbackQuery", chat_id, trace_id, repeatable=True, limited=False,
                                 call=lambda: self.bot.answer_callback_query(query_id, short, show_alert=alert))
        return result is not None

    async def _slot(self, chat_id: int | None, limited: bool) -> None:
        # A deadline, not a flag: another 429 may push it further while we sleep.
        while (wait := self._paused_until - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)
        if not limited:
            return
        if chat_id is not None and chat_id < 0:
            await self._groups.setdefault(chat_id, AsyncLimiter(GROUP_PER_MINUTE, 60)).acquire()
        await self._overall.acquire()

    async def _run(self, method: str, chat_id: int | None, trace_id: str | None, repeatable: bool,
                   call: Callable[[], Awaitable[T]], limited: bool = True) -> T | None:
        backoff = Backoff(BACKOFF_FIRST, 2.0, BACKOFF_CAP, jitter=0.2)
        for attempt in range(1, self.attempts + 1):
            await self._slot(chat_id, limited)
            try:
                return await call()
            except TelegramError as exc:
                verdict = classify(exc)
                if isinstance(exc, BadRequest) and "not modified" in exc.message:
                    return True  # type: ignore[return-value]  # an edit already in place: the repeat of a done edit
                fields = {"method": method, "chat_id": chat_id, "trace_id": trace_id, "attempt": attempt,
                          "error": f"{type(exc).__name__}: {exc.message}"}
                if verdict == FINAL:
                    log(logger, logging.WARNING, "tg_failed", **fields)
                    return None
                if verdict == UNKNOWN and not repeatable:
                    log(logger, logging.WARNING, "tg_send_unknown", **fields,
                        rule="not repeated: it may already be shown, and a repeat would duplicate it")
                    return None
                if attempt == self.attempts:
                    log(logger, logging.ERROR, "tg_gave_up", **fields)
                    return None
                wait = backoff.next()
                if isinstance(exc, RetryAfter):
                    wait = _retry_after(exc) + 0.1
                    self._paused_until = max(self._paused_until, time.monotonic() + wait)
                log(logger, logging.WARNING, "tg_retry", **fields, wait_s=round(wait, 2), verdict=verdict)
                await asyncio.sleep(wait)
        return None
