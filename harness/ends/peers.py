"""Scripted WebSocket peers: a node for driving the real manager (A1), a manager for the real node (A2).

They speak the protocol module's messages and nothing else; they never stand in for Codex.
"""
from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from runtime.protocol import NODE_AUTH_HEADER, Api, Msg, bearer, decode, encode, message


async def _next(queue: asyncio.Queue[dict[str, Any]], wanted: Callable[[dict[str, Any]], bool], timeout: float,
                failure: str) -> dict[str, Any]:
    """The next frame `wanted` accepts, skipping the others; TimeoutError(failure) when none comes in time."""
    try:
        async with asyncio.timeout(timeout):
            while not wanted(msg := await queue.get()):
                pass
    except TimeoutError:
        raise TimeoutError(failure) from None
    return msg


class ScriptedNode:
    """A hand-driven node: every frame the manager sends is queued for the test to inspect."""

    def __init__(self, manager_url: str, node_id: str, local_address: str | None = None) -> None:
        self.url = manager_url.replace("http://", "ws://") + Api.NODE_WS
        self.node_id = node_id
        # local_address: connect from another loopback address (127.0.0.N), which the manager counts apart
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            local_addr=(local_address, 0) if local_address else None))
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.close_frame_code: int | None = None  # the code in the manager's close frame, if one arrived

    async def connect(self, token: str | None = None) -> ScriptedNode:
        """Open the socket; with a token, on the upgrade request as a node of protocol 3 sends it."""
        headers = {NODE_AUTH_HEADER: bearer(token)} if token is not None else None
        self.ws = await self.http.ws_connect(self.url, max_msg_size=0, headers=headers)
        self._reader = asyncio.create_task(self._read())
        return self

    async def register(self, token: str | None) -> dict[str, Any]:
        fields = {"node_id": self.node_id, "version": "scripted"}
        if token is not None:
            fields["token"] = token
        await self.send(message(Msg.REGISTER, **fields))
        return await self.expect(Msg.REGISTER_OK, Msg.REGISTER_ERROR)

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(encode(msg))

    async def send_raw(self, data: str | bytes) -> None:
        assert self.ws is not None
        await (self.ws.send_bytes(data) if isinstance(data, bytes) else self.ws.send_str(data))

    async def expect(self, *kinds: Msg, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame of one of these types (others are skipped, heartbeat acks included)."""
        return await _next(self.inbox, lambda msg: msg.get("type") in kinds, timeout,
                           f"{self.node_id}: no {[k.value for k in kinds]} within {timeout}s")

    def stop_reading(self) -> None:
        """Read nothing more, as a sleeping laptop or a SIGSTOPped node does, with TCP still up: once aiohttp's own
        buffer is full it stops reading the socket, the kernel's buffers fill, and the manager's sends stall."""
        assert self._reader is not None
        self._reader.cancel()

    async def closed(self, timeout: float = 10.0) -> int | None:
        """Wait for the manager to close this socket; returns the code the manager closed it with."""
        assert self._reader is not None and self.ws is not None
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_frame_code if self.close_frame_code is not None else self.ws.close_code

    async def _read(self) -> None:
        assert self.ws is not None
        while True:
            frame = await self.ws.receive()
            if frame.type == aiohttp.WSMsgType.TEXT:
                await self.inbox.put(decode(frame.data))
            elif frame.type == aiohttp.WSMsgType.CLOSE:
                # Kept apart from ws.close_code, which aiohttp turns into 1006 when its own closing reply
                # fails: a manager that refuses an oversized frame closes (and resets) while we still write.
                self.close_frame_code = int(frame.data)
                return
            elif frame.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        await self.http.close()


class ScriptedManager:
    """A stand-in manager for one real node: accepts its registration and records every frame."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.connects: list[float] = []
        self._connected = asyncio.Condition()
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.ws: web.WebSocketResponse | None = None
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, sock: socket.socket | None = None) -> ScriptedManager:
        """Listen on a fresh loopback port, or on `sock`: a port reserved earlier (ports.reserved())."""
        app = web.Application()
        app.router.add_get(Api.NODE_WS, self._socket)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.SockSite(self.runner, sock) if sock is not None else web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.runner is not None:
            await self.runner.cleanup()

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async with self._connected:
            self.connects.append(time.monotonic())
            self._connected.notify_all()
        async for frame in ws:
            msg = decode(frame.data)
            if msg["type"] == Msg.REGISTER:
                if not self.accept:
                    await ws.send_str(encode(message(Msg.REGISTER_ERROR, error="scripted refusal",
                                                     error_kind="unauthorized")))
                    await ws.close()
                    break
                self.ws = ws
                await ws.send_str(encode(message(Msg.REGISTER_OK, node_id=msg["node_id"], session_id="scripted")))
            elif msg["type"] == Msg.HEARTBEAT:
                await ws.send_str(encode(message(Msg.HEARTBEAT_ACK, ts=time.time())))
            await self.frames.put(msg)
        return ws

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None, "no node registered yet"
        await self.ws.send_str(encode(msg))

    async def expect(self, kind: Msg, timeout: float = 30.0, **match: Any) -> dict[str, Any]:
        return await _next(self.frames, lambda msg: msg["type"] == kind and all(msg.get(k) == v for k, v in match.items()),
                           timeout, f"no {kind.value} matching {match} within {timeout}s")

    async def connected(self, count: int, timeout: float = 30.0) -> list[float]:
        """When each connection attempt arrived, once `count` of them have."""
        async with self._connected:
            await asyncio.wait_for(self._connected.wait_for(lambda: len(self.connects) >= count), timeout)
        return list(self.connects)

    async def registered(self, timeout: float = 30.0) -> dict[str, Any]:
        return await self.expect(Msg.REGISTER, timeout)
