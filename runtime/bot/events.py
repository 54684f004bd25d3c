"""The manager's event stream, kept open for the bot's whole life: reconnects with capped, jittered backoff.

Each event is handled in its own task so a slow Telegram call never stalls the stream (the manager cuts
off subscribers that fall behind); per-approval and per-turn locks keep the order that matters.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import aiohttp
import msgspec

from runtime.aiotasks import Background
from runtime.backoff import Backoff
from runtime.bot.cursor import Cursor
from runtime.bot.manager_client import ManagerClient
from runtime.logfmt import log
from runtime.protocol import Api, Event, RelayError, decode_event, new_id

logger = logging.getLogger("codex_bot.events")

EventHandler = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


class EventStream:
    def __init__(self, manager: ManagerClient, handlers: Mapping[str, EventHandler],
                 on_connect: Callable[[str], Coroutine[Any, Any, None]], cursor: Cursor) -> None:
        self.manager = manager
        self.handlers = handlers
        self.on_connect = on_connect
        self.cursor = cursor
        self.tasks = Background(logger)

    async def run_forever(self) -> None:
        backoff, failures = Backoff(0.5, 1.7, 10.0, jitter=0.2), 0
        while True:
            trace_id = new_id("tr")
            try:
                if await self._listen(trace_id):
                    backoff.reset()
                    failures = 0
                    log(logger, logging.WARNING, "events_disconnected", trace_id=trace_id, reason="closed by manager")
            except aiohttp.WSServerHandshakeError as exc:
                failures += 1
                level = (logging.ERROR if exc.status == 401 else logging.WARNING) if failures == 1 else logging.DEBUG
                log(logger, level, "events_refused", trace_id=trace_id, status=exc.status,
                    fix="set --control-token to the manager's control token" if exc.status == 401 else None)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                failures += 1
                # The first failure in a row is a warning; the rest repeat it quietly until the manager is back.
                log(logger, logging.WARNING if failures == 1 else logging.DEBUG, "events_unavailable",
                    trace_id=trace_id, error=f"{type(exc).__name__}: {exc}")
            await backoff.sleep()

    async def _listen(self, trace_id: str) -> bool:
        """One connection; True if it got as far as the manager's hello (so the backoff starts over)."""
        hello = False
        async with self.manager.session.ws_connect(self.manager.url(Api.EVENTS), heartbeat=20.0,
                                                   headers={"X-Trace-Id": trace_id}, params=self.cursor.query(),
                                                   timeout=aiohttp.ClientWSTimeout(ws_close=5.0)) as ws:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    break
                event = self._decode(frame.data)
                if event is None:
                    continue
                if event.get("type") == Event.HELLO and not hello:
                    hello = True
                    self.cursor.hello(str(event.get("manager_id") or ""), int(event.get("last_seq") or 0))
                    log(logger, logging.INFO, "events_connected", trace_id=trace_id, online=event.get("online"),
                        after=self.cursor.seq, replayed=event.get("replayed") or 0)
                    self.tasks.spawn(self.on_connect(trace_id), "events-resync")
                    continue
                seq = int(event.get("seq") or 0)
                if seq and not self.cursor.taken(seq):
                    continue  # handled before a reconnect or a restart
                handler = self.handlers.get(event["type"])  # StrEnum keys match the wire string
                if handler is not None:
                    self.tasks.spawn(self._handle(handler, event, seq), f"event-{event['type']}")
                elif seq:
                    self.cursor.done(seq)
        return hello

    async def _handle(self, handler: EventHandler, event: dict[str, Any], seq: int) -> None:
        try:
            await handler(event)
        finally:
            if seq:
                self.cursor.done(seq)  # handled, or failed and logged: either way not to be shown twice

    @staticmethod
    def _decode(raw: str) -> dict[str, Any] | None:
        """An event checked against its declaration; one this bot cannot read is logged and skipped."""
        try:
            event: dict[str, Any] = msgspec.to_builtins(decode_event(raw))
        except RelayError as err:
            log(logger, logging.WARNING, "event_invalid", error=err.error, frame=raw[:200])
            return None
        return event

    async def close(self) -> None:
        await self.tasks.close()
