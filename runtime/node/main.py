"""Node entry point: check the machine, start the codex child, and relay for the manager."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from runtime import __version__, eventloop
from runtime.aiotasks import cancel
from runtime.logfmt import log
from runtime.node import config as config_mod
from runtime.node import doctor
from runtime.node import roots
from runtime.node.appserver import AppServer
from runtime.node.config import NodeConfig
from runtime.node.link import ManagerLink
from runtime.node.readiness import Monitor
from runtime.node.tasks import Runner
from runtime.protocol import RelayError
from runtime.protocol import wire
from runtime.settings import ConfigError, load_or_exit, startup_failed

logger = logging.getLogger("codex_node")
# codex's notifications that its login changed (e.g. `account/login/start` through the relay): check readiness again.
ACCOUNT_CHANGED = frozenset({"account/updated", "account/login/completed"})


class Node:
    def __init__(self, config: NodeConfig, codex_version: str) -> None:
        self.config = config
        self.link = ManagerLink(config, __version__, self.handle, self._health, lambda: self.readiness.current)
        self.app = AppServer(config, self._on_notify, self._on_server_request, __version__)
        self.readiness = Monitor(config, self.app, codex_version, self.link.report_readiness)
        self.runner = Runner(config, self.link, self.app, self.readiness)
        self.codex_version = codex_version
        # What the manager may ask of a node, by message type; anything else is logged and dropped.
        self.handlers: dict[type[wire.Frame], Callable[[Any], Awaitable[None]]] = {
            wire.TaskAssign: self.runner.on_assign, wire.TaskSync: self.runner.on_sync,
            wire.TaskCancel: self.runner.on_cancel, wire.ApprovalDecision: self.runner.on_decision,
            wire.AppserverRequest: self._relay}

    def _health(self) -> wire.Heartbeat:
        rss, _ = self.app.usage()
        return wire.Heartbeat(codex_rss_mb=round(rss / (1 << 20), 1), codex_recycles=self.app.recycles)

    def _on_notify(self, method: str, params: dict[str, Any]) -> None:
        if method in ACCOUNT_CHANGED:
            self.readiness.poke()
        self.runner.on_notify(method, params)

    async def _on_server_request(self, method: str, params: dict[str, Any], request_id: Any) -> dict[str, Any] | None:
        return await self.runner.on_server_request(method, params, request_id)

    async def handle(self, msg: wire.ManagerFrame) -> None:
        handler = self.handlers.get(type(msg))
        if handler is None:
            log(logger, logging.WARNING, "unexpected_message", node_id=self.config.node_id,
                type=msg.__struct_config__.tag)
            return
        await handler(msg)

    async def _relay(self, msg: wire.AppserverRequest) -> None:
        try:
            params = roots.guard(msg.method, msg.params, self.config.cwd, self.config.allowed_roots)
            answer = await self.app.request(msg.method, params, msg.timeout)
            self.runner.relayed(msg.method, params, answer)
            result = wire.RpcOutcome(ok=True, result=answer)
        except RelayError as err:
            result = wire.RpcOutcome(ok=False, **err.fields())
        # The answer first, the log line after: formatting and writing it is not the caller's wait.
        await self.link.send(wire.AppserverResponse(request_id=msg.request_id, result=result))
        log(logger, logging.INFO, "appserver_call", node_id=self.config.node_id, trace_id=msg.trace_id,
            method=msg.method, ok=result.ok, error_kind=result.error_kind)

    async def run(self) -> None:
        self.app.start()
        link = self.link.tasks.spawn(self.link.run_forever(), "link")
        readiness = self.link.tasks.spawn(self.readiness.run_forever(), "readiness")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log(logger, logging.INFO, "node_started", node_id=self.config.node_id, version=__version__,
            codex=self.codex_version, manager_url=self.config.manager_url, max_pending=self.config.max_pending)
        await stop.wait()
        await self.runner.drain(self.config.drain_timeout)
        await cancel(readiness)
        await cancel(link)
        await self.link.tasks.close()
        await self.app.close()
        self.link.results.close()
        log(logger, logging.INFO, "node_stopped", node_id=self.config.node_id)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["doctor"]:
        doctor.main(args[1:])
        return
    config = load_or_exit(config_mod.load, args, logger)
    try:
        codex_version = config_mod.check_environment(config)
    except ConfigError as err:
        startup_failed(logger, err)
    eventloop.run(Node(config, codex_version).run(), config.event_loop)


if __name__ == "__main__":
    main()
