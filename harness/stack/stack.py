"""Boots the real stack on loopback: Toxiproxy, the mock upstream, the manager and N nodes.

node->manager and codex->upstream each go through their own Toxiproxy proxy, so any one
link can be faulted. Every process logs to a file under the stack's directory in reports/.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from harness.ends import mcp_asker
from harness.ends.telegram import FakeTelegram
from harness.ends.upstream import prompt_key
from harness.faults.toxics import FaultLog, Toxics
from harness.stack import paths, ports
from harness.stack.procs import Proc, log_fields
from runtime.backoff import Backoff
from runtime.bot.config import SETTINGS as BOT_SETTINGS
from runtime.bot.webhook import PATH as WEBHOOK_PATH
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
base_url = "http://127.0.0.1:{port}{base_path}"
wire_api = "responses"
requires_openai_auth = {requires_openai_auth}
supports_websockets = false
request_max_retries = {request_max_retries}
stream_max_retries = {stream_max_retries}
stream_idle_timeout_ms = {stream_idle_timeout_ms}
"""
# The mock provider's settings a node may change (add_node's `provider=`). Retries 0 fail fast: the harness
# judges each fault, not codex's retries. `requires_openai_auth` with base_path /auth/v1 plays a provider that
# needs a login (harness/ends/upstream.py answers 401 there without an API key).
PROVIDER = {"base_path": "/v1", "requires_openai_auth": False, "request_max_retries": 0, "stream_max_retries": 0,
            "stream_idle_timeout_ms": 10000}


def write_codex_home(home: Path, upstream_port: int, provider: dict[str, Any] | None = None) -> Path:
    """A CODEX_HOME whose config points codex at the mock upstream on `upstream_port`, changed by `provider`."""
    home.mkdir(parents=True, exist_ok=True)
    toml = {k: str(v).lower() if isinstance(v, bool) else v for k, v in {**PROVIDER, **(provider or {})}.items()}
    (home / "config.toml").write_text(CODEX_CONFIG.format(port=upstream_port, **toml))
    return home


MCP_ASKER = """
[mcp_servers.{name}]
command = {python}
args = [{script}]
"""


def launch(loader: Loader[Any], module: str, options: dict[str, Any],
           secrets_dir: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """A service's command line and environment: secrets go in CODEX_RELAY_<SERVICE>_<NAME>, never in argv,
    which every process listing shows and each log's first line records (H-10). With `secrets_dir`, each secret
    is a file there instead, named by CODEX_RELAY_<SERVICE>_<NAME>_FILE, as systemd's credentials are (S-04)."""
    argv, env = [PY, "-m", module], {}
    for key, value in options.items():
        name = key.replace("-", "_")
        if name in loader.fields and loader.fields[name].secret and secrets_dir is not None:
            path = secrets_dir / f"{loader.env(name).lower()}-{secrets.token_hex(4)}"
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as fh:
                fh.write(f"{value}\n")  # one trailing newline, as `echo` leaves it; the services drop it
            env[loader.env(name) + "_FILE"] = str(path)
        elif name in loader.fields and loader.fields[name].secret:
            env[loader.env(name)] = str(value)
        else:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv, env


class Stack:
    def __init__(self, root: Path, manager_args: dict[str, Any] | None = None, secret_files: bool = False) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        # secret_files: every service reads its secrets from files (`*_FILE`), kept outside reports/ as a deployment
        # keeps them outside its logs, and removed at close.
        self.secrets_dir = Path(tempfile.mkdtemp(prefix="relay-secrets-")) if secret_files else None
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
        self.webhook_url = self.webhook_secret = ""  # set by start_bot(webhook=True)
        self.bot_settings: dict[str, Any] = {}

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
        if self.secrets_dir is not None:
            shutil.rmtree(self.secrets_dir, ignore_errors=True)

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
            "port": self.manager_port, "db": self.db_path, "control_token": self.control_token, **self.manager_args},
            self.secrets_dir)

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

    async def add_node(self, node_id: str, token: str | None = None, wait: bool = True,
                       provider: dict[str, Any] | None = None, roots: tuple[str, ...] = (), **settings: Any) -> Proc:
        """A real node with its own CODEX_HOME and cwd; its links run through Toxiproxy. `provider` changes the
        mock provider in its codex config (PROVIDER); `roots` names folders beside its cwd (made here) that its
        threads may use too (`allowed_roots`)."""
        assert self.toxics is not None
        cwd = self.node_dir(node_id) / "cwd"
        cwd.mkdir(parents=True, exist_ok=True)
        for root in roots:
            (self.node_dir(node_id) / root).mkdir(exist_ok=True)
        if roots:
            settings["allowed_roots"] = ",".join(str(p) for p in (cwd, *(self.node_dir(node_id) / r for r in roots)))
        up_port = await self.toxics.create(self.upstream_link(node_id), self.upstream_port)
        mgr_port = await self.toxics.create(self.manager_link(node_id), self.manager_port)
        home = write_codex_home(self.root / "nodes" / node_id / "codex_home", up_port, provider)
        if settings.pop("mcp_asker", False):  # a user's MCP server that asks questions ([[mock:elicit]])
            with (home / "config.toml").open("a") as config:
                config.write(MCP_ASKER.format(name=mcp_asker.NAME, python=json.dumps(PY),
                                              script=json.dumps(mcp_asker.__file__)))
        if token is None:
            token = (await self.call(Api.TOKENS, {"node_id": node_id, "note": "harness"}))["token"]
            ISSUED[f"{self.root.name} node token {node_id}"] = token  # not a case's own (wrong, short) ones
        self.node_settings[node_id] = {
            "node_id": node_id, "token": token, "manager_url": f"ws://127.0.0.1:{mgr_port}{Api.NODE_WS}",
            "cwd": str(cwd), "codex_bin": str(paths.codex_bin()), "codex_home": str(home),
            "state_dir": str(self.root / "nodes" / node_id / "state"),
            # Every line between the node and codex, kept with the run's logs (Stack.traffic reads it).
            "appserver_log": str(self.root / "logs" / f"{node_id}.appserver.jsonl"),
            # Heartbeats every 0.5 s: cases that wait for one (or for proof there was none) wait less. The
            # silence limit stays above the longest request a case holds in a link (B2's 2 s app-server call).
            "heartbeat_interval": 0.5, "manager_silence": 4.0, **settings, **NODE_OVERRIDES}
        proc = self._proc(node_id, *self.node_launch(node_id))
        proc.start()
        if wait:
            await self.wait_online(node_id)
        return proc

    def traffic(self, node_id: str) -> list[dict[str, Any]]:
        """What the node and its codex children said to each other so far (its appserver_log), oldest first:
        each line has `dir` (`>>` towards codex), `gen` (which child) and `msg`."""
        path = Path(self.node_settings[node_id]["appserver_log"])
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []

    def node_launch(self, node_id: str) -> tuple[list[str], dict[str, str]]:
        return launch(NODE_SETTINGS, "runtime.node.main", self.node_settings[node_id], self.secrets_dir)

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

    async def wait_readiness(self, node_id: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        """Until the manager says the node's readiness is `state` (/api/servers); returns that readiness."""
        seen: Any = None
        async for _ in Backoff(0.1, factor=1).tries(timeout):
            servers = (await self.call(Api.SERVERS, record=False))["servers"]
            seen = next((s.get("readiness") for s in servers if s["node_id"] == node_id), None)
            if seen is not None and seen.get("state") == state:
                return dict(seen)
        raise TimeoutError(f"node {node_id}'s readiness is not {state} within {timeout}s: {seen}")

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

    async def start_bot(self, webhook: bool = False, **settings: Any) -> FakeTelegram:
        """The fake Bot API and the real bot; bot->manager and bot->Telegram go through Toxiproxy, and with
        `webhook` Telegram->bot too: the fake POSTs each update to the bot's webhook, with a secret token."""
        assert self.toxics is not None and self._http is not None
        tg = self._proc("telegram", [PY, "-m", "harness.ends.fake_telegram", "--host", "127.0.0.1", "--port", "0"],
                        {"FAKE_TELEGRAM_TOKEN": self.bot_token}).start()
        tg_port = await tg.wait_port("ready")
        to_tg = await self.toxics.create(self.bot_telegram_link, tg_port)
        to_mgr = await self.toxics.create(self.bot_manager_link, self.manager_port)
        options = {"telegram_token": self.bot_token, "telegram_base_url": f"http://127.0.0.1:{to_tg}/bot",
                   "manager_url": f"http://127.0.0.1:{to_mgr}", "control_token": self.control_token,
                   "allowed_users": f"{self.ADMIN},{self.USER}", "admin_users": str(self.ADMIN),
                   "poll_timeout": 5, "progress_interval": 1.0, "state_dir": str(self.root / "bot"),
                   # Off, as auth-failures is for the manager: cases speak as the same few users many times a minute.
                   # S-05 (scenarios/A/test_a3_security.py) turns it on.
                   "user_rate_limit": 0, **settings}
        self.bot_settings = options
        nowhere = ports.reserved()  # where the webhook's proxy points until the bot names its port: refused
        try:
            if webhook:
                to_bot = await self.toxics.create(self.telegram_bot_link, nowhere.getsockname()[1])
                self.webhook_secret = "whs_" + secrets.token_hex(16)
                ISSUED[f"{self.root.name} webhook secret"] = self.webhook_secret
                self.webhook_url = f"http://127.0.0.1:{to_bot}{WEBHOOK_PATH}"
                options.update(webhook_url=self.webhook_url, webhook_listen="127.0.0.1", webhook_port=0,
                               webhook_secret=self.webhook_secret)
            bot = self._proc("bot", *launch(BOT_SETTINGS, "runtime.bot.main", options, self.secrets_dir)).start()
            self.telegram = FakeTelegram(self._http, tg_port)
            if webhook:  # updates sent meanwhile are refused, and the fake tries them again
                ready = log_fields(await bot.wait_log("bot_ready", timeout=20))
                await self.toxics.retarget(self.telegram_bot_link, int(ready["webhook_port"]))
            else:
                await self.telegram.wait_polling(20)
        finally:
            nowhere.close()
        return self.telegram

    def spawn(self, name: str, service: str, **options: Any) -> Proc:
        """One more process of a service (`manager`, `node` or `bot`) with exactly these settings, its secrets
        handed over as the stack's are; stopped with the stack. For a case's misconfigured extra."""
        loader, module = SERVICES[service]
        return self._proc(name, *launch(loader, module, options, self.secrets_dir)).start()

    async def expect_exit(self, proc: Proc, timeout: float = 20.0) -> int:
        """Wait for a process the case expects to exit on its own (a refused setting); that exit is no crash."""
        async for _ in Backoff(0.1, factor=1).tries(timeout):
            if (code := proc.returncode) is not None:
                proc.stopped_by_harness = True
                return code
        raise TimeoutError(f"{proc.name} still runs after {timeout}s; see {proc.log_path}")

    @property
    def telegram_bot_link(self) -> str:
        return f"{self.root.name}_telegram_to_bot"

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


SERVICES: dict[str, tuple[Loader[Any], str]] = {"manager": (MANAGER_SETTINGS, "runtime.manager.main"),
                                                "node": (NODE_SETTINGS, "runtime.node.main"),
                                                "bot": (BOT_SETTINGS, "runtime.bot.main")}
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
