"""`codex-relay-manager doctor --config manager.toml`: can this machine run the manager? One line per check.

It reads the settings the manager would read, then checks the database (read-only: a running manager is left
alone), its TLS certificate when one is set, and the address it listens on: free, or held by a manager that answers.
"""
from __future__ import annotations

import errno
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Sequence

import aiohttp

from runtime import doctor, tls
from runtime.doctor import Check, fail, ok, skip
from runtime.manager import config as config_mod
from runtime.manager.config import SETTINGS, ManagerConfig
from runtime.manager.store import MIGRATIONS
from runtime.protocol import Api
from runtime.settings import ConfigError


def db_check(path: str) -> Check:
    """The database opens and its schema is one this manager knows; a missing one needs a writable folder."""
    folder = os.path.dirname(os.path.abspath(path))
    fix = f"point {SETTINGS.where('db')} at a file in a folder the manager's user may write"
    if not os.path.exists(path):
        if os.path.isdir(folder) and os.access(folder, os.W_OK):
            return ok("db", f"{path} does not exist yet; the manager creates it")
        return fail("db", f"{path} does not exist, and its folder {folder} is missing or not writable", fix)
    if not (os.access(path, os.W_OK) and os.access(folder, os.W_OK)):  # WAL writes beside the file
        return fail("db", f"{path} or its folder is not writable", fix)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            (version,) = db.execute("SELECT version FROM schema_version").fetchone()
            (nodes,) = db.execute("SELECT COUNT(*) FROM nodes").fetchone()
            (open_tasks,) = db.execute("SELECT COUNT(*) FROM tasks WHERE state NOT IN ('done', 'failed')").fetchone()
        finally:
            db.close()
    except (sqlite3.Error, TypeError) as exc:
        return fail("db", f"{path} is not a manager database it can read: {exc}", fix)
    if version > len(MIGRATIONS):
        return fail("db", f"{path} has schema {version}, newer than this manager's {len(MIGRATIONS)}",
                    "run the manager release that wrote it, or restore a backup")
    return ok("db", f"{path}: schema {version}, {nodes} nodes, {open_tasks} open tasks")


async def listen_check(config: ManagerConfig) -> Check:
    """The address is free to listen on, or a manager already serves there (this one, running)."""
    where = f"{config.host}:{config.port}"
    try:
        with socket.create_server((config.host, config.port)):
            return ok("listen", f"{where} is free" if config.port else f"{config.host}, on a free port (port 0)")
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            return fail("listen", f"cannot listen on {where}: {exc.strerror}",
                        f"set {SETTINGS.where('host')} to an address of this machine")
    base = f"{'https' if config.tls_cert else 'http'}://{config.host}:{config.port}"
    try:
        # A running manager's own certificate need not be trusted here: the question is only who holds the port.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                         timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(base + Api.HEALTHZ.value) as resp:
                health = await resp.json(content_type=None) if resp.status == 200 else None
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        health = None
    if isinstance(health, dict) and health.get("ok"):
        return ok("listen", f"a manager already serves {where} ({health.get('online')} nodes online)")
    return fail("listen", f"{where} is taken by another program", f"stop it, or set {SETTINGS.where('port')} to a "
                "free port")


async def checks(argv: Sequence[str]) -> AsyncIterator[Check]:
    try:
        config = config_mod.load(argv)
    except ConfigError as err:
        yield fail("config", err.error, err.fix)
        for name in ("db", "listen"):
            yield skip(name, "needs a valid config")
        return
    yield ok("config", f"host={config.host}, port={config.port}, db={config.db}")
    yield db_check(config.db)
    if config.tls_cert:
        tls.server_context(config.tls_cert, config.tls_key)  # load() has loaded it: a bad one failed the config
        yield ok("tls", f"serves HTTPS/WSS with {config.tls_cert}")
    yield await listen_check(config)


def main(argv: Sequence[str]) -> None:
    doctor.main(checks, argv)
