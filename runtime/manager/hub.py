"""The manager's live state: who is connected, who waits for which reply, who listens to events.

Nothing here touches SQLite; the durable half of every fact lives in store.py.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from runtime.manager.sender import Sender
from runtime.protocol import encode_bytes
from runtime.protocol.wire import EventFrame, Frame, Readiness, RpcOutcome


@dataclass(slots=True)  # 10,000 of them in a fleet
class NodeSession:
    node_id: str
    session_id: str
    token_id: str
    sender: Sender
    version: str
    protocol: int
    connected_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    codex_rss_mb: float = 0.0  # as its last heartbeat said
    codex_recycles: int = 0
    readiness: Readiness | None = None  # as it last reported; None from a node older than protocol 3
    cwd: str = ""  # as it registered: its default working directory and the roots its threads may use
    allowed_roots: tuple[str, ...] = ()

    @property
    def ws(self) -> web.WebSocketResponse:
        return self.sender.ws

    def send(self, msg: Frame | bytes) -> bool:
        """Queued for the session's writer; False if the node is gone or was cut off for falling behind."""
        return self.sender.put(msg if isinstance(msg, bytes) else encode_bytes(msg))


class Hub:
    def __init__(self) -> None:
        self.sessions: dict[str, NodeSession] = {}
        self.task_waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.rpc_waiters: dict[str, tuple[str, asyncio.Future[RpcOutcome]]] = {}  # request_id -> node_id, future
        self.subscribers: set[Sender] = set()
        self.unregistered = 0  # node sockets open but not registered yet
        self.counters: Counter[str] = Counter()

    # ---- sessions ---------------------------------------------------------------------------
    def online(self, node_id: str) -> NodeSession | None:
        session = self.sessions.get(node_id)
        return session if session is not None and session.sender.open else None

    def sessions_for_token(self, token_id: str) -> list[NodeSession]:
        return [s for s in self.sessions.values() if s.token_id == token_id]

    # ---- waiters ----------------------------------------------------------------------------
    def wait_task(self, task_id: str) -> asyncio.Future[dict[str, Any]]:
        fut = self.task_waiters.get(task_id)
        if fut is None or fut.done():
            fut = asyncio.get_running_loop().create_future()
            self.task_waiters[task_id] = fut
        return fut

    def resolve_task(self, task_id: str, result: dict[str, Any]) -> None:
        fut = self.task_waiters.pop(task_id, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def wait_rpc(self, node_id: str, request_id: str) -> asyncio.Future[RpcOutcome]:
        fut: asyncio.Future[RpcOutcome] = asyncio.get_running_loop().create_future()
        self.rpc_waiters[request_id] = (node_id, fut)
        return fut

    def resolve_rpc(self, node_id: str, request_id: str, response: RpcOutcome) -> bool:
        """Only the node the call went to may answer it; anything else is a late or stray reply."""
        waiter = self.rpc_waiters.get(request_id)
        if waiter is None or waiter[0] != node_id or waiter[1].done():
            return False
        del self.rpc_waiters[request_id]
        waiter[1].set_result(response)
        return True

    def fail_rpcs(self, node_id: str, response: RpcOutcome) -> None:
        """A node's replies die with its socket: its callers learn now rather than at their timeout."""
        for request_id, (owner, fut) in list(self.rpc_waiters.items()):
            if owner == node_id:
                del self.rpc_waiters[request_id]
                if not fut.done():
                    fut.set_result(response)

    # ---- events -----------------------------------------------------------------------------
    def close_subscribers(self) -> None:
        """Tell every event-stream writer to finish, so a shutdown does not wait on idle listeners."""
        for sender in list(self.subscribers):
            self.subscribers.discard(sender)
            sender.finish()

    def publish(self, event: EventFrame, frame: bytes | None = None) -> None:
        """To every subscriber; `frame` is the event already encoded (a numbered one, by Store.add_event)."""
        raw = encode_bytes(event) if frame is None else frame
        for sender in list(self.subscribers):
            # A reader past its byte budget is cut off (Sender.put) rather than growing the manager's memory.
            if not sender.put(raw, event.seq):
                self.subscribers.discard(sender)
