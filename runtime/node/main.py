"""Node entry point: check the machine, start the codex child, and relay for the manager."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from runtime import __version__, eventloop, logfmt
from runtime.logfmt import log
from runtime.node import config as config_mod
from runtime.node.appserver import AppServer
from runtime.node.config import NodeConfig
from runtime.node.link import ManagerLink
from runtime.node.tasks import Runner
from runtime.protocol import Msg, RelayError, message, result_fields
from runtime.settings import ConfigError, startup_failed

logger = logging.getLogger("codex_node")


class Node:
    def __init__(self, config: NodeConfig, codex_version: str) -> None:
        self.config = config
        self.link = ManagerLink(config, __version__, self.handle)
        self.app = AppServer(config, self._on_notify, self._on_server_request, __version__)
        self.runner = Runner(config, self.link, self.app)
        self.codex_version = codex_version

    def _on_notify(self, method: str, params: dict[str, Any]) -> None:
        self.runner.on_notify(method, params)

    async def _on_server_request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return await self.runner.on_server_request(method, params)

    async def handle(self, kind: Msg, msg: dict[str, Any]) -> None:
        if kind == Msg.TASK_ASSIGN:
            await self.runner.on_assign(msg)
        elif kind == Msg.TASK_SYNC:
            await self.runner.on_sync(list(msg.get("task_ids") or []))
        elif kind == Msg.TASK_CANCEL:
            await self.runner.on_cancel(str(msg.get("task_id")))
        elif kind == Msg.APPROVAL_DECISION:
            self.runner.on_decision(str(msg.get("approval_id")), str(msg.get("decision")))
        elif kind == Msg.APPSERVER_REQUEST:
            await self._relay(msg)
        else:
            log(logger, logging.WARNING, "unexpected_message", node_id=self.config.node_id, type=kind.value)

    async def _relay(self, msg: dict[str, Any]) -> None:
        timeout = float(msg.get("timeout") or self.config.rpc_timeout)
        try:
            result = result_fields(True, result=await self.app.request(str(msg.get("method")),
                                                                      msg.get("params") or {}, timeout))
        except RelayError as err:
            result = result_fields(False, err)
        # The answer first, the log line after: formatting and writing it is not the caller's wait.
        await self.link.send(message(Msg.APPSERVER_RESPONSE, request_id=msg.get("request_id"), result=result))
        log(logger, logging.INFO, "appserver_call", node_id=self.config.node_id, trace_id=msg.get("trace_id"),
            method=msg.get("method"), ok=result["ok"], error_kind=result.get("error_kind"))

    async def run(self) -> None:
        self.app.start()
        link = asyncio.create_task(self.link.run_forever(), name="link")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log(logger, logging.INFO, "node_started", node_id=self.config.node_id, version=__version__, codex=self.codex_version,
            manager_url=self.config.manager_url, max_pending=self.config.max_pending)
        await stop.wait()
        link.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await link
        await self.app.close()


def main(argv: list[str] | None = None) -> None:
    logfmt.setup("info")
    try:
        config = config_mod.load(argv)
        logfmt.setup(config.log_level)
        codex_version = config_mod.check_environment(config)
    except ConfigError as err:
        startup_failed(logger, err)
    eventloop.run(Node(config, codex_version).run(), config.event_loop)


if __name__ == "__main__":
    main()
