"""Boots the real stack on loopback: Toxiproxy, the mock upstream, the manager and N nodes.

node->manager and codex->upstream each go through their own Toxiproxy proxy, so any one
link can be faulted. Every process logs to a file under the stack's directory in reports/.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from harness.ends.telegram import FakeTelegram
from harness.ends.upstream import prompt_key
from harness.faults.toxics import FaultLog, Toxics
from harness.stack import paths, ports
from harness.stack.procs import Proc
from runtime.backoff import Backoff
from runtime.bot.config import SETTINGS as BOT_SETTINGS
from runtime.manager.config import SETTINGS as MANAGER_SETTINGS
from runtime.node.config import SETTINGS as NODE_SETTINGS
from runtime.protocol import Api, new_id
from runtime.settings import Loader

PY = sys.executable
# Run the gates against another node configuration, e.g. '{"rpc_timeout": 0.001}': the self-test uses it
# to prove a broken build fails the right gate, without touching code.
NODE_OVERRIDES: dict[str, Any] = json.loads(os.environ.get("HARNESS_NODE_OVERRIDES") or "{}")
# Every secret any stack of this process made, by what it is: H-10 looks for each under the run's folder.
ISSUED: dict[str, str] = {}

CODEX_CONFIG = """\
model = "gpt-5.5"
model_provider = "mock"
approval_policy = "on-request"
sandbox_mode = "read-only"
check_for_update_on_startup = false
[analytics]
enabled = false
[feedback]
enabled = false
[otel]
exporter = "none"
trace_exporter = "none"
metrics_exporter = "none"
[features]
plugins = false          # otherwise codex syncs plugins from the internet at startup
remote_plugin = false
shell_snapshot = false   # else each new thread runs a login shell: the machine's ~/.bashrc (pyenv here), per turn
apps = false
[model_providers.mock]
name = "mock"
base_url = "http://127.0.0.1:{port}/v1"
wire_api = "responses"
requires_openai_auth = false
supports_websockets = false
request_max_retries = 0  # fail fast: the harness judges each fault, not codex's retries
stream_max_retries = 0
stream_idle_timeout_ms = {idle_ms}
"""


def launch(loader: Loader[Any], module: str, options: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """A service's command line and environment: secrets go in CODEX_RELAY_<SERVICE>_<NAME>, never in argv,
    which every process listing shows and each log's first line records (H-10)."""
    argv, env = [PY, "-m", module], {}
    for key, value in options.items():
        name = key.replace("-", "_")
        if name in loader.fields and loader.fields[name].secret:
            env[loader.env(name)] = str(value)
        else:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv, env


class Stack:
    def __init__(self, root: Path, manager_args: dict[str, Any] | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        # Fresh secrets per stack, so H-10 can look for each one under reports/ and in every argv.
        self.control_token = "ctl_" + secrets.token_hex(12)
        self.bot_token = f"{secrets.randbelow(9 * 10**8) + 10**8}:{secrets.token_urlsafe(24)}"
        ISSUED.update({f"{root.name} control token": self.control_token, f"{root.name} bot token": self.bot_token})
        self.manager_port = 0  # bound by the manager's first start, then kept across restarts
        self.db_path = root / "manager.sqlite3"
        # auth-failures 0: every client here is 127.0.0.1, and cases that present bad tokens on purpose must not
        # lock the rest out; tests/test_auth_throttle.py turns it on.
        self.manager_args = {"heartbeat-interval": 1.0, "offline-timeout": 4.0, "result-grace": 30.0,
                             "auth-failures": 0, **(manager_args or {})}
        self.faults = FaultLog(root / "faults.jsonl")
        self.procs: dict[str, Proc] = {}
        self.node_settings: dict[str, dict[str, Any]] = {}
        self.toxics: Toxics | None = None
        self.upstream_port = 0
        self._http: aiohttp.ClientSession | None = None
        # Every control call made, with the ids it touched: a case's steps and log filter come from here.
        self.trail: list[dict[str, Any]] = []
        self.telegram: FakeTelegram | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> Stack:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        await self._start_toxiproxy()
        await self._start_upstream()
        await self.start_manager()
        return self

    async def close(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.terminate()
        if self._http is not None:
            await self._http.close()

    def _proc(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, self.root / "logs" / f"{name}.log", env)
        self.procs[name] = proc
        return proc

    async def _start_toxiproxy(self) -> None:
        if url := os.environ.get("TOXIPROXY_URL"):
            # A Toxiproxy the user already runs (Docker, Homebrew): share it, with our own proxy names.
            parsed = urlsplit(url)
            await self._wait_http(f"{url.rstrip('/')}/version", "toxiproxy")
            self.toxics = Toxics(parsed.hostname or "127.0.0.1", parsed.port or 8474, self.faults,
                                 shared_prefix=f"{self.root.name}_")
            return
        proc = self._proc("toxiproxy", [str(paths.toxiproxy_server()), "-host", "127.0.0.1", "-port", "0"]).start()
        port = await ports.listening(proc.pid, f"toxiproxy (log: {proc.log_path})")
        await self._wait_http(f"http://127.0.0.1:{port}/version", "toxiproxy", proc=proc)
        self.toxics = Toxics("127.0.0.1", port, self.faults)

    async def _start_upstream(self) -> None:
        proc = self._proc("upstream", [PY, "-m", "harness.ends.upstream", "--host", "127.0.0.1", "--port", "0"]).start()
        self.upstream_port = await proc.wait_port("listen")

    async def start_manager(self) -> Proc:
        """Start (or restart) the manager. The first start binds port 0; every later start, by the harness or
        by a fault's restart, binds the port that one got, where every proxy to the manager points."""
        proc = self.procs.get("manager") or self._proc("manager", *self._manager_launch())
        ready = len(proc.log_lines("manager_ready"))
        proc.start()
        self.manager_port = await proc.wait_port("manager_ready", seen=ready)
        proc.argv = self._manager_launch()[0]
        await self.wait_manager()
        return proc

    def _manager_launch(self) -> tuple[list[str], dict[str, str]]:
        return launch(MANAGER_SETTINGS, "runtime.manager.main", {
            "port": self.manager_port, "db": self.db_path, "control_token": self.control_token, **self.manager_args})

    async def wait_manager(self, timeout: float = 20.0) -> None:
        await self._wait_http(f"{self.manager_url}{Api.HEALTHZ}", "manager", timeout, self.procs["manager"])

    async def restart_manager(self) -> None:
        """SIGKILL, then start on the same port and DB: what B1-01/02/11 need."""
        async with self.faults.window("sigkill", "manager"):
            self.procs["manager"].kill()
        await self.start_manager()

    async def _wait_http(self, url: str, what: str, timeout: float = 20.0, proc: Proc | None = None) -> None:
        assert self._http is not None
        async for _ in Backoff(0.05, factor=1).tries(timeout):
            try:
                async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError):
                pass  # not listening yet, or busy starting
            if proc is not None and not proc.alive:
                raise RuntimeError(f"{what} exited with {proc.returncode}; see {proc.log_path}")
        raise TimeoutError(f"{what} not ready at {url} within {timeout}s")

    # ---- nodes -----------------------------------------------------------------------------
    @property
    def manager_url(self) -> str:
        return f"http://127.0.0.1:{self.manager_port}"

    def node_dir(self, node_id: str) -> Path:
        return self.root / "nodes" / node_id

    async def add_node(self, node_id: str, token: str | None = None, wait: bool = True, roots: tuple[str, ...] = (),
                       **settings: Any) -> Proc:
        """A real node with its own CODEX_HOME and cwd; its links run through Toxiproxy. `roots` names folders
        beside its cwd (made here) that its threads may use too (`allowed_roots`)."""
        assert self.toxics is not None
        home, cwd = self.node_dir(node_id) / "codex_home", self.node_dir(node_id) / "cwd"
        home.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        for root in roots:
            (self.node_dir(node_id) / root).mkdir(exist_ok=True)
        if roots:
            settings["allowed_roots"] = ",".join(str(p) for p in (cwd, *(self.node_dir(node_id) / r for r in roots)))
        up_port = await self.toxics.create(self.upstream_link(node_id), self.upstream_port)
        mgr_port = await self.toxics.create(self.manager_link(node_id), self.manager_port)
        idle_ms = int(settings.pop("stream_idle_timeout_ms", 10000))
        (home / "config.toml").write_text(CODEX_CONFIG.format(port=up_port, idle_ms=idle_ms))
        if token is None:
            token = (await self.call(Api.TOKENS, {"node_id": node_id, "note": "harness"}))["token"]
            ISSUED[f"{self.root.name} node token {node_id}"] = token  # not a case's own (wrong, short) ones
        self.node_settings[node_id] = {
            "node_id": node_id, "token": token, "manager_url": f"ws://127.0.0.1:{mgr_port}{Api.NODE_WS}",
            "cwd": str(cwd), "codex_bin": str(paths.codex_bin()), "codex_home": str(home),
            "state_dir": str(self.root / "nodes" / node_id / "state"),
            # Heartbeats every 0.5 s: cases that wait for one (or for proof there was none) wait less. The
            # silence limit stays above the longest request a case holds in a link (B2's 2 s app-server call).
            "heartbeat_interval": 0.5, "manager_silence": 4.0, **settings, **NODE_OVERRIDES}
        proc = self._proc(node_id, *self.node_launch(node_id))
        proc.start()
        if wait:
            await self.wait_online(node_id)
        return proc

    def node_launch(self, node_id: str) -> tuple[list[str], dict[str, str]]:
        return launch(NODE_SETTINGS, "runtime.node.main", self.node_settings[node_id])

    def manager_link(self, node_id: str) -> str:
        return f"{self.root.name}_{node_id}_to_manager"

    def upstream_link(self, node_id: str) -> str:
        return f"{self.root.name}_{node_id}_to_upstream"

    async def restart_node(self, node_id: str) -> None:
        """SIGKILL the node and start it again; returns once the new process has registered.

        Waiting for "online" alone is not enough: the manager may not have seen the old socket close yet.
        """
        proc = self.procs[node_id]
        async with self.faults.window("sigkill", node_id):
            proc.kill()
        registrations = len(proc.log_lines("registered"))
        proc.start()
        await proc.wait_log("registered", timeout=30.0, seen=registrations)
        await self.wait_online(node_id)

    async def wait_online(self, node_id: str, online: bool = True, timeout: float = 30.0) -> None:
        async for _ in Backoff(0.1, factor=1).tries(timeout):
            try:
                if (node_id in (await self.call(Api.SERVERS, record=False))["online"]) == online:
                    return
            except (TimeoutError, aiohttp.ClientError):
                pass  # the manager is restarting: ask again
            proc = self.procs.get(node_id)
            if online and proc is not None and not proc.alive:
                raise RuntimeError(f"node {node_id} exited with {proc.returncode}; see {proc.log_path}")
        raise TimeoutError(f"node {node_id} not {'online' if online else 'offline'} within {timeout}s")

    @asynccontextmanager
    async def node_cut_off(self, node_id: str) -> AsyncIterator[None]:
        """The node's link to the manager is down and the manager has noticed; back online on exit."""
        assert self.toxics is not None
        async with self.toxics.link_down(self.manager_link(node_id)):
            await self.wait_online(node_id, online=False, timeout=10)
            yield
        await self.wait_online(node_id)

    async def wait_heartbeat(self, node_id: str, after: float, timeout: float = 30.0) -> None:
        """Online with a heartbeat newer than `after`: the link works again, not merely not yet reaped.

        After a fault that held data, a node can look online for a few seconds before either side gives
        up on the old socket; this waits for proof that frames flow again.
        """
        async for _ in Backoff(0.2, factor=1).tries(timeout):
            servers = (await self.call(Api.SERVERS, record=False))["servers"]
            if any(s["node_id"] == node_id and s["online"] and s["last_seen"] > after for s in servers):
                return
        raise TimeoutError(f"node {node_id} sent no heartbeat after {after:.3f} within {timeout}s")

    # ---- the bot and its fake Telegram ------------------------------------------------------
    ADMIN, USER, STRANGER = 1001, 1002, 1666

    async def start_bot(self, **settings: Any) -> FakeTelegram:
        """The fake Bot API and the real bot; bot->manager and bot->Telegram go through Toxiproxy."""
        assert self.toxics is not None and self._http is not None
        tg = self._proc("telegram", [PY, "-m", "harness.ends.fake_telegram", "--host", "127.0.0.1", "--port", "0"],
                        {"FAKE_TELEGRAM_TOKEN": self.bot_token}).start()
        tg_port = await tg.wait_port("ready")
        to_tg = await self.toxics.create(self.bot_telegram_link, tg_port)
        to_mgr = await self.toxics.create(self.bot_manager_link, self.manager_port)
        options = {"telegram_token": self.bot_token, "telegram_base_url": f"http://127.0.0.1:{to_tg}/bot",
                   "manager_url": f"http://127.0.0.1:{to_mgr}", "control_token": self.control_token,
                   "allowed_users": f"{self.ADMIN},{self.USER}", "admin_users": str(self.ADMIN),
                   "poll_timeout": 5, "progress_interval": 1.0, "state_dir": str(self.root / "bot"), **settings}
        self._proc("bot", *launch(BOT_SETTINGS, "runtime.bot.main", options)).start()
        self.telegram = FakeTelegram(self._http, tg_port)
        await self.telegram.wait_polling(20)
        return self.telegram

    @property
    def bot_telegram_link(self) -> str:
        return f"{self.root.name}_bot_to_telegram"

    @property
    def bot_manager_link(self) -> str:
        return f"{self.root.name}_bot_to_manager"

    # ---- control API -----------------------------------------------------------------------
    async def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                      token: str | None = None, timeout: float = 120.0, record: bool = True) -> tuple[int, dict[str, Any]]:
        """One raw control call: (HTTP status, JSON envelope). Recorded calls become the case's steps."""
        assert self._http is not None
        trace_id = new_id("tr")
        headers = {"Authorization": f"Bearer {self.control_token if token is None else token}", "X-Trace-Id": trace_id}
        kwargs: dict[str, Any] = {"params": body} if method == "GET" else {"json": body or {}}
        entry: dict[str, Any] = {"start": time.time(), "call": f"{method} {path}", "trace_id": trace_id,
                                 "body": body or {}}
        if record:
            self.trail.append(entry)
        async with self._http.request(method, self.manager_url + path, headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=timeout), **kwargs) as resp:
            envelope = await resp.json()
        entry.update(end=time.time(), status=resp.status, ids=_ids(body or {}, envelope))
        return resp.status, envelope

    async def call(self, path: Api, body: dict[str, Any] | None = None, method: str | None = None,
                   **kw: Any) -> dict[str, Any]:
        """A control call that must succeed on both planes; returns the inner result."""
        method = method or ("GET" if path in GET_ONLY else "POST")
        status, env = await self.request(method, path, body, **kw)
        assert status == 200 and env["ok"] and env["result"]["ok"], f"{method} {path} -> {status} {env}"
        return dict(env["result"])

    async def result(self, path: Api, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        """A control call that must pass the control plane; returns the business result, ok or not."""
        status, env = await self.request("POST", path, body, **kw)
        assert status == 200 and env["ok"], f"POST {path} -> {status} {env}"
        return dict(env["result"])

    async def metric(self, event: str) -> int:
        """One counter from the manager's /metrics (relay_events_total{event=...})."""
        assert self._http is not None
        async with self._http.get(self.manager_url + Api.METRICS) as resp:
            found = re.search(rf'relay_events_total{{event="{event}"}} (\d+)', await resp.text())
        return int(found.group(1)) if found else 0

    async def gauge(self, series: str) -> float:
        """One gauge from /metrics by its whole series, e.g. `relay_event_subscribers` or `relay_waiters{kind="rpc"}`."""
        assert self._http is not None
        async with self._http.get(self.manager_url + Api.METRICS) as resp:
            found = re.search(rf"^{re.escape(series)} (\S+)$", await resp.text(), re.MULTILINE)
        if found is None:
            raise AssertionError(f"/metrics has no series {series}")
        return float(found.group(1))

    def note(self, *ids: str) -> None:
        """Ids a case touched outside the control API (a scripted peer's node_id), for locating its logs."""
        self.trail.append({"note": True, "ids": list(ids)})

    # ---- the mock upstream -----------------------------------------------------------------
    async def upstream(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self._http is not None
        async with self._http.request(method, f"http://127.0.0.1:{self.upstream_port}{path}", json=body) as resp:
            return dict(await resp.json())

    async def serves(self, prompt: str) -> int:
        """How many times the mock model was asked this prompt: the evidence against double execution."""
        stats = await self.upstream("GET", "/_mock/stats")
        return int(stats["serves"].get(prompt_key(prompt), 0))

    async def wait_served(self, prompt: str, timeout: float = 15.0) -> None:
        """Until codex has asked the mock model for `prompt`: the turn is under way, mid-stream in codex.
        Prompts are unique per run, so an earlier run's turn cannot answer for this one."""
        async for _ in Backoff(0.05, factor=1).tries(timeout):
            if await self.serves(prompt) >= 1:
                return
        raise TimeoutError(f"codex never asked the model for {prompt!r} within {timeout}s")


# Paths served only as GET; TOKENS and USERS take both, so callers pass method="GET" to list them.
GET_ONLY = {Api.SERVERS, Api.APPROVALS, Api.CHAT, Api.TASKS}


def _ids(body: dict[str, Any], envelope: dict[str, Any]) -> list[str]:
    """The ids that locate a call in the logs: node, task, approval, token and thread ids."""
    found: list[str] = []
    for source in (body, envelope.get("result") or {}):
        for key in ("node_id", "task_id", "approval_id", "token_id", "thread_id", "chat_key"):
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, str) and value not in found:
                found.append(value)
    return found
