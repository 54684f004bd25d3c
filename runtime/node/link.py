"""The node's WebSocket link to the manager: register, heartbeat, reconnect, and an outbox.

Results written while the link is down wait in the outbox and go out once after the next
registration; the manager's task_sync covers the rare frame lost in a dying socket.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from typing import Any
from collections.abc import Awaitable, Callable

import aiohttp

from runtime.logfmt import log
from runtime.node.config import NodeConfig
from runtime.protocol import (CLOSE_REPLACED, MAX_FRAME_BYTES, PROTOCOL_VERSION, Msg, RelayError, decode, encode,
                              message, parse_msg_type)

logger = logging.getLogger("codex_node")

Handler = Callable[[Msg, dict[str, Any]], Awaitable[None]]
OUTBOX_MAX = 10_000  # bounded: a node cut off for days must not grow without limit
DURABLE = {Msg.TASK_RESULT, Msg.APPROVAL_EXPIRED, Msg.APPROVAL_REQUEST}


class ManagerLink:
    def __init__(self, config: NodeConfig, version: str, handler: Handler) -> None:
        self.config = config
        self.version = version
        self.handler = handler
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.registered = asyncio.Event()
        self.outbox: deque[dict[str, Any]] = deque(maxlen=OUTBOX_MAX)
        self.delays: list[float] = []  # reconnect delays actually slept, for logs and tests
        self._last_ack = time.monotonic()

    async def send(self, msg: dict[str, Any]) -> bool:
        """Send now if registered; durable messages otherwise wait in the outbox."""
        if self.registered.is_set() and self.ws is not None and not self.ws.closed:
            try:
                await self.ws.send_str(encode(msg))
                return True
            except (ConnectionError, RuntimeError):
                pass
        if Msg(msg["type"]) in DURABLE:
            self.outbox.append(msg)
        return False

    def next_delay(self, attempt: int) -> float:
        base = min(self.config.backoff_initial * self.config.backoff_factor ** attempt, self.config.backoff_max)
        return base * (1 + random.uniform(-self.config.backoff_jitter, self.config.backoff_jitter))

    async def run_forever(self) -> None:
        attempt = 0
        async with aiohttp.ClientSession() as http:
            while True:
                registered = await self._session(http)
                attempt = 0 if registered else attempt + 1
                delay = self.next_delay(attempt)
                self.delays.append(delay)
                log(logger, logging.INFO, "reconnect_wait", node_id=self.config.node_id, attempt=attempt,
                    delay=round(delay, 3))
                await asyncio.sleep(delay)

    async def _session(self, http: aiohttp.ClientSession) -> bool:
        """One connection's life; True if it got as far as a successful registration."""
        try:
            self.ws = await http.ws_connect(self.config.manager_url, max_msg_size=MAX_FRAME_BYTES,
                                            heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=2))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log(logger, logging.WARNING, "connect_failed", node_id=self.config.node_id, error=str(exc) or type(exc).__name__)
            return False
        try:
            if not await self._register(self.ws):
                return False
            beat = asyncio.create_task(self._heartbeat(self.ws))
            try:
                await self._receive(self.ws)
            finally:
                beat.cancel()
            return True
        finally:
            self.registered.clear()
            await self.ws.close()
            log(logger, logging.WARNING, "link_down", node_id=self.config.node_id, close_code=self.ws.close_code)

    async def _register(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        await ws.send_str(encode(message(Msg.REGISTER, node_id=self.config.node_id, token=self.config.token,
                                         version=self.version, protocol=PROTOCOL_VERSION)))
        try:
            frame = await ws.receive(timeout=10)
            msg = decode(frame.data) if frame.type == aiohttp.WSMsgType.TEXT else {}
        except (TimeoutError, RelayError):
            msg = {}
        if msg.get("type") != Msg.REGISTER_OK:
            log(logger, logging.ERROR, "register_rejected", node_id=self.config.node_id,
                error_kind=msg.get("error_kind"), error=msg.get("error", "no register_ok"))
            return False
        self._last_ack = time.monotonic()
        self.registered.set()
        log(logger, logging.INFO, "registered", node_id=self.config.node_id, session_id=msg.get("session_id"),
            outbox=len(self.outbox))
        while self.outbox:
            pending = self.outbox[0]
            await ws.send_str(encode(pending))
            self.outbox.popleft()  # dropped only once the frame left, so a failure keeps it for next time
        return True

    async def _heartbeat(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(self.config.heartbeat_interval)
            if time.monotonic() - self._last_ack > self.config.manager_silence:
                # A held (not reset) connection never errors by itself: give up on it explicitly.
                log(logger, logging.WARNING, "manager_silent", node_id=self.config.node_id)
                await ws.close()
                return
            try:
                await ws.send_str(encode(message(Msg.HEARTBEAT, node_id=self.config.node_id, ts=time.time())))
            except (ConnectionError, RuntimeError):
                return

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            self._last_ack = time.monotonic()
            try:
                msg = decode(frame.data)
                kind = parse_msg_type(msg)
            except RelayError as err:
                log(logger, logging.WARNING, "bad_frame", node_id=self.config.node_id, error=err.error)
                continue
            if kind == Msg.HEARTBEAT_ACK:
                continue
            if kind == Msg.ERROR:
                log(logger, logging.WARNING, "manager_error", node_id=self.config.node_id,
                    error_kind=msg.get("error_kind"), error=msg.get("error"))
                continue
            # Never await a handler here: a slow app-server call must not stall heartbeats (seed bug B1).
            asyncio.create_task(self._dispatch(kind, msg))
        if ws.close_code == CLOSE_REPLACED:
            log(logger, logging.WARNING, "session_replaced", node_id=self.config.node_id)

    async def _dispatch(self, kind: Msg, msg: dict[str, Any]) -> None:
        try:
            await self.handler(kind, msg)
        except Exception:
            logger.exception("handler failed", extra={"kv": {"op": "handler_failed", "node_id": self.config.node_id,
                                                              "type": kind.value}})
