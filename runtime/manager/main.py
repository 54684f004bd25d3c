"""Manager entry point: wires the store, the node socket and the control API into one aiohttp app."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator

from aiohttp import web

from runtime import __version__, eventloop, tls
from runtime.logfmt import log
from runtime.manager import backup, doctor
from runtime.manager import config as config_mod
from runtime.manager.config import ManagerConfig
from runtime.manager.collector import Collector
from runtime.manager.control import add_routes, openapi_view
from runtime.manager.guard import Connecting, GuardedSite
from runtime.manager.keys import COLLECTOR, MANAGER
from runtime.manager.node_ws import node_socket
from runtime.manager.service import Manager
from runtime.protocol import CLOSE_SHUTDOWN, MAX_BODY_BYTES, Api, ReadyState, RelayError
from runtime.settings import load_or_exit

logger = logging.getLogger("codex_manager")

EXIT_STORAGE = 3


async def healthz(request: web.Request) -> web.Response:
    mgr = request.app[MANAGER]
    # A health check that reads the DB also proves the store's thread is not wedged.
    await mgr.store.query("SELECT 1")
    return web.json_response({"ok": True, "online": len(mgr.hub.sessions), "uptime": time.time() - mgr.started_at})


async def metrics(request: web.Request) -> web.Response:
    mgr = request.app[MANAGER]
    lines = ["# TYPE relay_nodes_online gauge", f"relay_nodes_online {len(mgr.hub.sessions)}",
             "# TYPE relay_event_subscribers gauge", f"relay_event_subscribers {len(mgr.hub.subscribers)}",
             "# TYPE relay_waiters gauge", f"relay_waiters{{kind=\"task\"}} {len(mgr.hub.task_waiters)}",
             f"relay_waiters{{kind=\"rpc\"}} {len(mgr.hub.rpc_waiters)}", "# TYPE relay_events_total counter"]
    lines += [f'relay_events_total{{event="{name}"}} {n}' for name, n in sorted(mgr.hub.counters.items())]
    try:
        counts = await mgr.store.open_task_counts()  # finished ones are counted by relay_events_total
    except RelayError:
        counts = {}
    lines.append("# TYPE relay_tasks gauge")
    lines += [f'relay_tasks{{state="{state}"}} {n}' for state, n in sorted(counts.items())]
    sessions = list(mgr.hub.sessions.values())
    # Online nodes by readiness: one not logged in, or cut off from its model provider, fails every turn.
    ready = Counter(s.readiness.state if s.readiness else ReadyState.UNKNOWN for s in sessions)
    lines.append("# TYPE relay_nodes_ready gauge")
    lines += [f'relay_nodes_ready{{state="{state.value}"}} {ready[state]}' for state in ReadyState]
    lines += ["# TYPE relay_codex_recycles gauge",
              f"relay_codex_recycles {sum(s.codex_recycles for s in sessions)}",
              "# TYPE relay_codex_rss_max_mb gauge",
              f"relay_codex_rss_max_mb {max((s.codex_rss_mb for s in sessions), default=0.0)}"]
    lines += request.app[COLLECTOR].metric_lines()
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def build_app(config: ManagerConfig) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    mgr = Manager(config)
    app[MANAGER] = mgr
    app[COLLECTOR] = collector = Collector(config.gc_interval)
    app.router.add_get(Api.HEALTHZ, healthz)
    app.router.add_get(Api.METRICS, metrics)
    app.router.add_get(Api.OPENAPI, openapi_view)
    app.router.add_get(Api.NODE_WS, node_socket)
    add_routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await mgr.start()
        collector.install()
        mgr.tasks.spawn(collector.run(), "gc")
        yield
        collector.uninstall()
        await mgr.stop()

    async def close_sockets(app: web.Application) -> None:
        # aiohttp waits for open handlers before cleanup: long-lived sockets must be told to end first.
        mgr.hub.close_subscribers()
        # Side by side and each bounded: one node that stopped reading cannot hold up the shutdown.
        await asyncio.gather(*(s.sender.close(CLOSE_SHUTDOWN, b"manager shutting down")
                               for s in list(mgr.hub.sessions.values())))

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_sockets)
    return app


async def serve(config: ManagerConfig) -> int:
    app = build_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    try:
        await runner.setup()
    except RelayError as err:
        log(logger, logging.ERROR, "startup_failed", error_kind=err.kind, error=err.error,
            fix=f"check that {config_mod.SETTINGS.where('db')} names a writable file", exit_code=EXIT_STORAGE)
        return EXIT_STORAGE
    connecting = Connecting(config.header_timeout, config.max_connecting, app[MANAGER].hub.counters)
    site = GuardedSite(runner, config.host, config.port, connecting, tls.server_context(config.tls_cert, config.tls_key))
    await site.start()
    port = runner.addresses[0][1]
    log(logger, logging.INFO, "manager_ready", host=config.host, port=port, db=config.db, version=__version__,
        tls=bool(config.tls_cert))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log(logger, logging.INFO, "manager_stopping")
    await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["backup"]:
        backup.main(args[1:])
        return
    if args[:1] == ["doctor"]:
        doctor.main(args[1:])
        return
    config = load_or_exit(config_mod.load, args, logger)
    sys.exit(eventloop.run(serve(config), config.event_loop))


if __name__ == "__main__":
    main()
