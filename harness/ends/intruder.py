"""Someone on another loopback address (127.0.0.N) presenting tokens and secrets: the manager slows that address
without slowing the stack's own clients on 127.0.0.1, and each Intruder of a process has an address of its own."""
from __future__ import annotations

import itertools
from typing import Any

import aiohttp

from harness.ends.peers import ScriptedNode
from runtime.protocol import Api, Msg

_hosts = itertools.count()
TIMEOUT = aiohttp.ClientTimeout(total=15)


class Intruder:
    def __init__(self, manager_url: str) -> None:
        self.address = f"127.0.0.{2 + next(_hosts) % 250}"
        self.manager_url = manager_url
        self.http = aiohttp.ClientSession(timeout=TIMEOUT,
                                          connector=aiohttp.TCPConnector(local_addr=(self.address, 0)))

    async def control(self, path: Api, token: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
        """One control call with `token` as its bearer: (HTTP status, JSON envelope)."""
        async with self.http.request(method, self.manager_url + path, json=None if method == "GET" else {},
                                     headers={"Authorization": f"Bearer {token}"}) as resp:
            return resp.status, dict(await resp.json())

    async def register(self, node_id: str, token: str) -> dict[str, Any]:
        """A node socket from this address that registers with `token`: the manager's reply frame."""
        node = ScriptedNode(self.manager_url, node_id, self.address)
        try:
            await node.connect()
            reply = await node.register(token)
            assert reply["type"] in (Msg.REGISTER_OK, Msg.REGISTER_ERROR), reply
            return reply
        finally:
            await node.close()

    async def post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str]:
        """Any POST, e.g. an update to the bot's webhook with a forged secret: (HTTP status, body text)."""
        async with self.http.post(url, json=body, headers=headers) as resp:
            return resp.status, await resp.text()

    async def close(self) -> None:
        await self.http.close()
