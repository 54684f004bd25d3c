"""The throughput baseline: a bare aiohttp relay, HTTP in -> WebSocket out -> WebSocket back -> HTTP out.

It speaks the node protocol just enough for a simulated node to register, and has no logic otherwise:
no auth, no validation, no store, no logging. `python -m bench.bare_relay --port 0`.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys
from typing import Any

from aiohttp import web

from harness.stack import paths
from harness.stack.procs import Proc
from harness.stack.stack import Stack
from runtime import eventloop
from runtime.protocol import Api, Msg, decode, encode, message

SOCKETS: dict[str, web.WebSocketResponse] = {}
WAITERS: dict[str, asyncio.Future[dict[str, Any]]] = {}
IDS = itertools.count()


async def relay(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    request_id = str(next(IDS))
    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    WAITERS[request_id] = fut
    await SOCKETS[body["node_id"]].send_str(encode(message(Msg.APPSERVER_REQUEST, request_id=request_id,
                                                           method=body["method"], params=body.get("params") or {},
                                                           timeout=30.0)))
    return web.Response(text=encode({"ok": True, "result": await fut}), content_type="application/json")


async def node_socket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for frame in ws:
        msg = decode(frame.data)
        if msg["type"] == Msg.APPSERVER_RESPONSE:
            WAITERS.pop(msg["request_id"]).set_result(msg["result"])
        elif msg["type"] == Msg.HEARTBEAT:
            await ws.send_str(encode(message(Msg.HEARTBEAT_ACK)))
        elif msg["type"] == Msg.REGISTER:
            SOCKETS[msg["node_id"]] = ws
            await ws.send_str(encode(message(Msg.REGISTER_OK, node_id=msg["node_id"], session_id="bare")))
    return ws


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post(Api.APPSERVER, relay)
    app.router.add_get(Api.NODE_WS, node_socket)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"op=ready port={runner.addresses[0][1]}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bare_relay", description=__doc__)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    # The manager's loop, whichever it is: the baseline must differ from the manager only in its logic.
    eventloop.run(serve(a.port), os.environ.get("CODEX_RELAY_MANAGER_EVENT_LOOP", eventloop.DEFAULT))


async def start(s: Stack) -> int:
    """Boot the bare relay as one more process of a stack (its close() stops it); returns its port."""
    proc = Proc("bare_relay", [sys.executable, "-m", "bench.bare_relay"],
                s.root / "logs" / "bare_relay.log", cwd=paths.REPO_ROOT).start()
    s.procs["bare_relay"] = proc
    return await proc.wait_port("ready")


if __name__ == "__main__":
    main()
