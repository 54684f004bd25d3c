"""Ports without a race: a process binds port 0 itself and the harness reads back the port it got.

Picking a free number first and handing it over races under pytest-xdist: two workers can pick the same one.
"""
from __future__ import annotations

import socket

import psutil

from runtime.backoff import Backoff


def reserved() -> socket.socket:
    """A socket bound to a loopback port but not listening: connects to it are refused until a server
    listens on it (pass it to that server), and no other process can take the port meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


async def listening(pid: int, what: str, timeout: float = 20.0) -> int:
    """The TCP port a process listens on, once it does: for servers that bind port 0 and do not say which."""
    async for _ in Backoff(0.05, factor=1).tries(timeout):
        try:
            found = [c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:  # a zombie too: it exited
            raise RuntimeError(f"{what} exited before it listened") from None
        if found:
            return int(found[0])
    raise TimeoutError(f"{what} did not listen within {timeout}s")
