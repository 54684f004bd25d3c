"""A scripted hostile peer against the manager: sockets that never register, garbage, wrong types, oversized bodies.

Bounded in count and time, loopback only. It asserts nothing: the soak's real nodes keep working, or not.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
from dataclasses import dataclass
from typing import Any

import aiohttp

from runtime.protocol import MAX_BODY_BYTES, Api, Msg, encode, message

STEP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Hostility:
    idle_sockets: int     # sockets that ping and never register; well under the manager's max_unregistered
    ping_interval_s: float


async def attack(manager_url: str, control_token: str, how: Hostility, stop: asyncio.Event) -> dict[str, Any]:
    """Play the hostile peer until `stop`; returns what the manager answered to each step (for the fault's window)."""
    seen: dict[str, Any] = {}
    ws_url = manager_url.replace("http://", "ws://") + Api.NODE_WS
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT_S)) as http:
        idle = [asyncio.create_task(_idle(http, ws_url, how.ping_interval_s, stop)) for _ in range(how.idle_sockets)]
        seen["garbage"] = await _step(_frame(http, ws_url, "\x00{not json"))
        seen["wrong_types"] = await _step(_frame(http, ws_url, encode(message(
            Msg.REGISTER, node_id=5, token=["x"], version=None, protocol="two"))))
        seen["oversized_body"] = await _step(_oversized(http, manager_url, control_token))
        seen["bad_token"] = await _step(_status(http, "GET", manager_url + Api.SERVERS, "ctl_" + secrets.token_hex(8)))
        outcomes = await asyncio.gather(*idle, return_exceptions=True)
    seen["idle_closed_by_manager"] = sum(1 for o in outcomes if o is True)
    return seen


async def _step(coro: Any) -> Any:
    try:
        return await asyncio.wait_for(coro, STEP_TIMEOUT_S)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"[:120]


async def _idle(http: aiohttp.ClientSession, url: str, interval: float, stop: asyncio.Event) -> bool | str:
    """Ping and never register; True if the manager closed the socket first (its register timeout)."""
    try:
        async with http.ws_connect(url, heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=1)) as ws:
            while not stop.is_set() and not ws.closed:
                await ws.ping()
                with contextlib.suppress(TimeoutError):
                    msg = await ws.receive(timeout=interval)
                    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                        return True
            return ws.closed
    except (aiohttp.ClientError, OSError, ConnectionError) as exc:
        return f"{type(exc).__name__}"  # e.g. 503 busy: the cap on registering sockets holds


async def _frame(http: aiohttp.ClientSession, url: str, data: str) -> str:
    """One frame before registration; the manager's first answer (an error frame, or a close)."""
    async with http.ws_connect(url, heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=1)) as ws:
        await ws.send_str(data)
        msg = await ws.receive(timeout=STEP_TIMEOUT_S)
        return str(msg.data)[:200] if msg.type == aiohttp.WSMsgType.TEXT else f"{msg.type.name} {ws.close_code}"


async def _oversized(http: aiohttp.ClientSession, base_url: str, token: str) -> int:
    body = b'{"node_id":"x","method":"thread/list","params":{"pad":"' + b"x" * MAX_BODY_BYTES + b'"}}'
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    # A file-like body: aiohttp warns (an error under pytest) that raw bytes past 1 MiB may block the loop.
    async with http.post(base_url + Api.APPSERVER, data=io.BytesIO(body), headers=headers) as resp:
        return resp.status


async def _status(http: aiohttp.ClientSession, method: str, url: str, token: str) -> int:
    async with http.request(method, url, headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status
