"""Updates from Telegram, checked one by one before PTB reads them, so one bad update cannot stall the bot.

PTB parses a getUpdates answer as a whole: one update it cannot parse fails the batch, the offset never
moves and it polls again at once, for as long as Telegram keeps the update (up to 24 h).
"""
from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from telegram import Update
from telegram.error import NetworkError
from telegram.request import BaseRequest, HTTPXRequest, RequestData

from runtime.logfmt import log

if TYPE_CHECKING:
    from telegram._utils.types import ODVInput

logger = logging.getLogger("codex_bot.updates")

SUBSCRIBED = (Update.MESSAGE, Update.CALLBACK_QUERY)  # edits, channel posts and the rest are not commands
NO_ID = "no integer update_id"  # such an update cannot be confirmed, only dropped


class Screen:
    """Says which updates the bot can handle, and logs the others with a running total (op=update_skipped)."""

    def __init__(self) -> None:
        self.skipped = 0

    def problem(self, raw: Any) -> str | None:
        """Why this update is skipped: PTB cannot parse it, or it is no kind the bot subscribed to; None if fine."""
        if not isinstance(raw, dict) or type(raw.get("update_id")) is not int:
            return NO_ID
        if not any(kind in raw for kind in SUBSCRIBED):
            return "not subscribed: " + (",".join(sorted(k for k in raw if k != "update_id")) or "empty")
        try:
            Update.de_json(raw, None)
        except Exception as exc:  # noqa: BLE001 - any failure to parse is the update's fault, not ours
            return f"unparsable: {type(exc).__name__}: {exc}"
        return None

    def skip(self, raw: Any, reason: str) -> None:
        self.skipped += 1
        update_id = raw.get("update_id") if isinstance(raw, dict) else None
        log(logger, logging.WARNING, "update_skipped", update_id=update_id, reason=reason[:300],
            skipped_total=self.skipped)

    def batch(self, payload: bytes) -> bytes:
        """A getUpdates answer with every bad update replaced by its bare `{"update_id": N}`: PTB confirms it
        with the next offset and handles nothing. Dropping it instead would leave the offset where it was."""
        try:
            body = json.loads(payload)
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("result"), list):
            # A NetworkError goes to PTB's retry loop, which backs off (1 s, growing to 30 s) instead of spinning.
            raise NetworkError(f"getUpdates answered no list of updates: {payload[:100]!r}")
        kept: list[Any] = []
        for raw in body["result"]:
            if (reason := self.problem(raw)) is None:
                kept.append(raw)
                continue
            self.skip(raw, reason)
            if reason != NO_ID:
                kept.append({"update_id": raw["update_id"]})
        if body["result"] and not kept:
            raise NetworkError("getUpdates answered only updates without an update_id: none can be confirmed")
        body["result"] = kept
        return json.dumps(body).encode()


class UpdatesRequest(HTTPXRequest):
    """The request PTB polls getUpdates with (ApplicationBuilder.get_updates_request): its public extension point."""

    def __init__(self, screen: Screen, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.screen = screen

    async def do_request(self, url: str, method: str, request_data: RequestData | None = None,
                         read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
                         write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
                         connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
                         pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE) -> tuple[int, bytes]:
        code, payload = await super().do_request(url, method, request_data, read_timeout, write_timeout,
                                                 connect_timeout, pool_timeout)
        if 200 <= code <= 299 and url.endswith("/getUpdates"):  # errors keep PTB's own handling
            payload = self.screen.batch(payload)
        return code, payload
