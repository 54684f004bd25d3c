"""The node's WebSocket link to the manager: register, heartbeat, reconnect, and an outbox.

Results written while the link is down wait in the outbox and go out once after the next
registration; the manager's task_sync covers the rare frame lost in a dying socket.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from runtime import tls
from runtime.aiotasks import Background
from runtime.backoff import Backoff
from runtime.logfmt import log
from runtime.node.config import NodeConfig
from runtime.node.outbox import Outbox
from runtime.protocol import (CLOSE_REPLACED, ERROR_KINDS, MAX_FRAME_BYTES, NODE_AUTH_HEADER, PROTOCOL_VERSION, ErrorKind,
                              RelayError, bearer, encode_bytes)
from runtime.protocol import wire

logger = logging.getLogger("codex_node")

Handler = Callable[[wire.ManagerFrame], Coroutine[Any, Any, None]]
OUTBOX_MAX = 10_000  # bounded: a node cut off for days must not grow without limit
DURABLE = (wire.ApprovalExpired, wire.ApprovalRequest, wire.ApprovalWithdrawn)


class ManagerLink:
    def __init__(self, config: NodeConfig, version: str, handler: Handler,
                 health: Callable[[], wire.Heartbeat] | None = None,
                 readiness: Callable[[], wire.Readiness] | None = None) -> None:
        self.config = config
        self.version = version
        self.handler = handler
        # What each heartbeat reports besides being alive (the codex child's memory and recycles).
        self.health = health or (lambda: wire.Heartbeat())
        # Whether the node can run turns: in every register frame, and in a `readiness` frame when it changes.
        self.readiness = readiness or (lambda: wire.Readiness())
        self.manager_protocol = 0  # the registered manager's; 0 while not registered
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.registered = asyncio.Event()
        self.outbox: deque[bytes] = deque(maxlen=OUTBOX_MAX)  # approval frames while the link is down
        self.results = Outbox(config.state_dir)  # task results, on disk until sent
        self.tasks = Background(logger, node_id=config.node_id)
        self.link_losses = 0  # ended sessions and failed connects: 0 means the link never dropped
        self._last_ack = time.monotonic()

    async def send(self, msg: wire.Frame) -> bool:
        """Send now if registered. A task's result is on disk first (outbox.py); approval frames otherwise
        wait in memory; both go out after the next registration."""
        raw = encode_bytes(msg)
        if isinstance(msg, wire.TaskResult):
            self.results.put(msg.task_id, raw)
            if sent := await self.send_raw(raw):
                self.results.sent(msg.task_id)
            return sent
        if await self.send_raw(raw):
            return True
        if isinstance(msg, DURABLE):
            self.outbox.append(raw)
        return False

    async def send_raw(self, raw: bytes) -> bool:
        if self.registered.is_set() and self.ws is not None and not self.ws.closed:
            try:
                await self.ws.send_frame(raw, aiohttp.WSMsgType.TEXT)
                return True
            except (ConnectionError, RuntimeError):
                pass
        return False

    async def run_forever(self) -> None:
        c = self.config
        backoff = Backoff(c.backoff_initial, c.backoff_factor, c.backoff_max, c.backoff_jitter)
        secure = tls.client_ssl(c.manager_url, c.tls_ca, c.tls_fingerprint)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=secure)) as http:
            while True:
                if await self._session(http):
                    backoff.reset()
                self.link_losses += 1
                delay = backoff.next()
                log(logger, logging.INFO, "reconnect_wait", node_id=c.node_id, attempt=backoff.attempt,
                    delay=round(delay, 3))
                await asyncio.sleep(delay)

    async def _session(self, http: aiohttp.ClientSession) -> bool:
        """One connection's life; True if it got as far as a successful registration."""
        try:
            # The token goes on the upgrade request too, so the manager lets this socket send large frames.
            self.ws = await http.ws_connect(self.config.manager_url, max_msg_size=MAX_FRAME_BYTES,
                                            headers={NODE_AUTH_HEADER: bearer(self.config.token)},
                                            heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=2))
        except aiohttp.WSServerHandshakeError as exc:
            # The manager answered the upgrade with an HTTP error (429 throttled, 503 busy): its envelope's kind.
            kind = {429: ErrorKind.RATE_LIMITED, 503: ErrorKind.BUSY}.get(exc.status)
            log(logger, logging.WARNING, "connect_refused", node_id=self.config.node_id, status=exc.status,
                error_kind=kind and kind.value, error=ERROR_KINDS[kind].text if kind else exc.message)
            return False
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if (problem := tls.failure(exc)) is not None:
                log(logger, logging.ERROR, "connect_failed", node_id=self.config.node_id, error=problem)
            else:
                log(logger, logging.WARNING, "connect_failed", node_id=self.config.node_id,
                    error=str(exc) or type(exc).__name__)
            return False
        try:
            if not await self._register(self.ws):
                return False
            async with self.tasks.scoped(self._heartbeat(self.ws), "heartbeat"):
                await self._receive(self.ws)
            return True
        finally:
            self.registered.clear()
            self.manager_protocol = 0
            await self.ws.close()
            log(logger, logging.WARNING, "link_down", node_id=self.config.node_id, close_code=self.ws.close_code)

    async def report_readiness(self, readiness: wire.Readiness) -> None:
        """A change of readiness, to a manager that takes it; one registered later gets it in the register frame."""
        if self.manager_protocol >= wire.READINESS_PROTOCOL:
            await self.send(wire.ReadinessReport(readiness=readiness))

    async def _register(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        told = self.readiness()
        await ws.send_frame(encode_bytes(wire.Register(node_id=self.config.node_id, token=self.config.token,
                                                       version=self.version, protocol=PROTOCOL_VERSION,
                                                       readiness=told, cwd=self.config.cwd,
                                                       allowed_roots=list(self.config.allowed_roots))),
                            aiohttp.WSMsgType.TEXT)
        msg: wire.ManagerFrame | None = None
        error = "no register_ok within 10s"
        try:
            frame = await ws.receive(timeout=10)
            if frame.type == aiohttp.WSMsgType.TEXT:
                msg = wire.decode_manager_frame(frame.data)
            else:
                error = f"the manager closed the socket (code {ws.close_code})"
        except TimeoutError:
            pass
        except RelayError as err:
            error = err.error
        if not isinstance(msg, wire.RegisterOk):
            kind = msg.error_kind if isinstance(msg, wire.RegisterError) else None
            error = msg.error or error if isinstance(msg, wire.RegisterError) else error
            log(logger, logging.ERROR, "register_rejected", node_id=self.config.node_id, error_kind=kind, error=error)
            return False
        self._last_ack = time.monotonic()
        self.manager_protocol = msg.protocol
        self.registered.set()
        log(logger, logging.INFO, "registered", node_id=self.config.node_id, session_id=msg.session_id,
            manager_protocol=msg.protocol, outbox=len(self.outbox))
        if (now := self.readiness()) is not told:  # it changed while the register frame was on its way
            await self.report_readiness(now)
        while self.outbox:
            await ws.send_frame(self.outbox[0], aiohttp.WSMsgType.TEXT)
            self.outbox.popleft()  # dropped only once the frame left, so a failure keeps it for next time
        for task_id, raw in self.results.unsent():
            await ws.send_frame(raw, aiohttp.WSMsgType.TEXT)
            self.results.sent(task_id)
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
                beat = self.health()
                beat.node_id, beat.ts = self.config.node_id, time.time()
                await ws.send_frame(encode_bytes(beat), aiohttp.WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for frame in ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            self._last_ack = time.monotonic()
            try:
                msg = wire.decode_manager_frame(frame.data)
            except RelayError as err:
                log(logger, logging.WARNING, "bad_frame", node_id=self.config.node_id, error=err.error)
                await self.send(wire.ErrorReply(**err.fields()))
                continue
            if isinstance(msg, wire.HeartbeatAck):
                continue
            if isinstance(msg, wire.ErrorReply):
                log(logger, logging.WARNING, "manager_error", node_id=self.config.node_id,
                    error_kind=msg.error_kind, error=msg.error)
                continue
            # Never await a handler here: a slow app-server call must not stall heartbeats (seed bug B1).
            self.tasks.spawn(self.handler(msg), str(msg.__struct_config__.tag))
        if ws.close_code == CLOSE_REPLACED:
            log(logger, logging.WARNING, "session_replaced", node_id=self.config.node_id)
