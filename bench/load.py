"""A minimal HTTP/1.1 keep-alive client on a raw socket, and a closed-loop load generator built on it.

A benchmark measures the relay, not an HTTP client library: this client costs a fraction of aiohttp's.
`RELAY_CONTROL_TOKEN=T python -m bench.load --port P --nodes a,b --concurrency 32 --seconds 5` posts app-server
relays round-robin over the nodes and prints one JSON line: completed round trips, errors, rate, latency.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

from runtime import eventloop
from runtime.protocol import Api, encode

OK_PREFIX = b'{"ok":true,"result":{"ok":true'


class HttpClient:
    """One keep-alive connection; `post` returns (status line ok, body)."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self._io: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def request(self, path: str, body: dict[str, Any]) -> bytes:
        data = encode(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {self.token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        return head.encode() + data

    async def send(self, raw: bytes) -> tuple[bool, bytes]:
        if self._io is None:
            self._io = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self._io
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        at = head.lower().index(b"content-length:") + 15
        body = await reader.readexactly(int(head[at:head.index(b"\r\n", at)]))
        return head.startswith(b"HTTP/1.1 200"), body

    async def close(self) -> None:
        if self._io is not None:
            self._io[1].close()
            self._io = None


async def _client(http: HttpClient, requests: list[bytes], warm_at: float, stop_at: float,
                  latencies: list[float], errors: list[int]) -> None:
    i = 0
    try:
        while (start := time.perf_counter()) < stop_at:
            ok, body = await http.send(requests[i % len(requests)])
            i += 1
            if start < warm_at:
                continue
            if ok and body.startswith(OK_PREFIX):
                latencies.append(time.perf_counter() - start)
            else:
                errors.append(1)
    finally:
        await http.close()


async def run(port: int, token: str, nodes: list[str], concurrency: int, seconds: float, warmup: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    warm_at = time.perf_counter() + warmup
    stop_at = warm_at + seconds
    clients = []
    for i in range(concurrency):
        http = HttpClient(port, token)
        # Each client starts on a different node, so the nodes share the load evenly.
        order = nodes[i % len(nodes):] + nodes[:i % len(nodes)]
        requests = [http.request(Api.APPSERVER, {"node_id": n, "method": "thread/list", "params": {}}) for n in order]
        clients.append(_client(http, requests, warm_at, stop_at, latencies, errors))
    await asyncio.gather(*clients)
    latencies.sort()
    return {"count": len(latencies), "errors": len(errors), "seconds": seconds, "rps": len(latencies) / seconds,
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else float("nan"),
            "p95_ms": 1000 * latencies[int(len(latencies) * 0.95)] if latencies else float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--nodes", required=True, help="comma-separated node ids to relay to")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    a = p.parse_args()
    token = os.environ.get("RELAY_CONTROL_TOKEN", "")  # never argv (H-10)
    print(json.dumps(eventloop.run(run(a.port, token, a.nodes.split(","), a.concurrency, a.seconds, a.warmup))))


if __name__ == "__main__":
    main()
