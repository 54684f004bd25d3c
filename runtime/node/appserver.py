"""The `codex app-server` child: JSON-RPC over stdio, restarted with backoff when it dies.

Requests are correlated by id, notifications and server->client requests are routed to
callbacks, and a crash fails every call in flight with `appserver_crash`. Every line both ways can be
written to a file for debugging (traffic.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from runtime.aiotasks import Background, cancel
from runtime.backoff import Backoff
from runtime.logfmt import log
from runtime.node.config import SETTINGS, NodeConfig
from runtime.node.traffic import Traffic
from runtime.protocol import ErrorKind, RelayError, encode_bytes

logger = logging.getLogger("codex_node")

Notify = Callable[[str, dict[str, Any]], None]
# (method, params, codex's request id) -> the JSON-RPC result; None when codex resolved the request itself
# (serverRequest/resolved), so it gets no answer at all. RpcError answers with a JSON-RPC error.
ServerRequest = Callable[[str, dict[str, Any], Any], Awaitable[dict[str, Any] | None]]
# codex's feature that offers its request_user_input tool in Default mode, not only in Plan mode (which a client can
# enter only through codex's experimental API). Set with -c, not --enable: a codex without it ignores the setting
# with a warning, where --enable would refuse to start.
USER_QUESTIONS = ("-c", "features.default_mode_request_user_input=true")
STREAM_LIMIT = 16 << 20  # codex lines carry whole turns; the default 64 KiB readline limit is too small
NO_PARAMS: Any = msgspec.UNSET  # a call sent without `params`: some codex methods take none


class RpcError(Exception):
    """A server request answered with a JSON-RPC error: its response has no way to say no, or it is unknown."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class AppServer:
    def __init__(self, config: NodeConfig, on_notify: Notify, on_request: ServerRequest, version: str) -> None:
        self.config = config
        self.on_notify = on_notify
        self.on_request = on_request
        self.version = version
        self.generation = 0  # bumps on every (re)start, so callers know which threads are loaded
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 1
        self._supervisor: asyncio.Task[None] | None = None
        self.tasks = Background(logger, node_id=config.node_id)
        self.recycles = 0
        self._recycling: str | None = None  # why the child is being restarted on purpose
        self._closing = False
        self.traffic = Traffic(config.appserver_log, config.node_id)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def usage(self) -> tuple[int, int]:
        """The child's RSS in bytes and its open files, from /proc; (0, 0) when it is not running."""
        pid = self.pid
        try:
            with open(f"/proc/{pid}/statm") as fh:
                rss = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            return rss, len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, ValueError, IndexError):
            return 0, 0

    @property
    def idle(self) -> bool:
        return not self._pending

    async def recycle(self, reason: str) -> bool:
        """Restart the child at once (not as a crash): its memory goes, its threads resume on their next turn.

        The caller makes sure no turn runs; calls that arrive meanwhile wait for the new child. False when
        there was nothing to restart, or a call is in flight."""
        proc = self.proc
        if proc is None or proc.returncode is not None or not self.idle:
            return False
        self.ready.clear()
        self._recycling = reason
        assert proc.stdin is not None
        proc.stdin.close()  # codex exits on stdin EOF within ~30 ms
        try:
            await asyncio.wait_for(proc.wait(), 3)
        except TimeoutError:
            proc.kill()
        return True

    def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="appserver")

    async def close(self) -> None:
        self._closing = True
        if self.proc and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # codex exits on stdin EOF within ~30 ms
            try:
                await asyncio.wait_for(self.proc.wait(), 3)
            except TimeoutError:
                self.proc.kill()
        if self._supervisor:
            await cancel(self._supervisor)
        await self.tasks.close()
        self.traffic.close()

    async def _supervise(self) -> None:
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_factor, self.config.backoff_max)
        while not self._closing:
            code: int | None = None
            try:
                proc = await self._spawn()
                backoff.reset()
                code = await proc.wait()
            except (TimeoutError, OSError, RelayError) as exc:
                log(logger, logging.ERROR, "appserver_start_failed", node_id=self.config.node_id, error=str(exc))
            self.ready.clear()
            self._fail_pending(RelayError(ErrorKind.APPSERVER_CRASH, f"codex app-server exited (code {code})"))
            if self._closing:
                return
            if self._recycling is not None:
                self.recycles += 1
                log(logger, logging.INFO, "appserver_recycled", node_id=self.config.node_id, reason=self._recycling,
                    code=code, recycles=self.recycles)
                self._recycling = None
                continue
            delay = backoff.next()
            log(logger, logging.WARNING, "appserver_exited", node_id=self.config.node_id, code=code,
                restart_in=round(delay, 2))
            await asyncio.sleep(delay)

    async def _spawn(self) -> asyncio.subprocess.Process:
        # Codex runs the model's commands: the node's own secrets (its token, or the path of its token file)
        # must not be in their environment.
        hidden = {SETTINGS.env(n) + suffix for n, f in SETTINGS.fields.items() if f.secret for suffix in ("", "_FILE")}
        env = {k: v for k, v in os.environ.items() if k not in hidden}
        if self.config.codex_home:
            env["CODEX_HOME"] = self.config.codex_home
        options = USER_QUESTIONS if self.config.user_questions else ()
        self.proc = proc = await asyncio.create_subprocess_exec(
            self.config.codex_bin, "app-server", *options, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=self.config.cwd, env=env, limit=STREAM_LIMIT)
        self.generation += 1
        self.tasks.spawn(self._read_stdout(proc), "appserver-stdout")
        self.tasks.spawn(self._read_stderr(proc), "appserver-stderr")
        await self._call("initialize", {"clientInfo": {"name": f"codex_node:{self.config.node_id}",
                                                       "title": "Codex Relay node", "version": self.version},
                                        "capabilities": None}, timeout=30)
        self._write({"method": "initialized"})
        log(logger, logging.INFO, "appserver_ready", node_id=self.config.node_id, pid=proc.pid,
            generation=self.generation)
        self.ready.set()
        return proc

    async def request(self, method: str, params: dict[str, Any] | msgspec.UnsetType, timeout: float) -> Any:
        """One JSON-RPC call once the child is up; the wait for readiness counts against the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            if not self.ready.is_set():  # wait_for on a set event can still time out when timeout is tiny
                await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            raise RelayError(ErrorKind.APPSERVER_CRASH,
                             "codex app-server is not running; the node is restarting it") from None
        return await self._call(method, params, max(deadline - loop.time(), 0.001))

    async def _call(self, method: str, params: dict[str, Any] | msgspec.UnsetType, timeout: float) -> Any:
        request_id = self._next_id
        self._next_id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        call: dict[str, Any] = {"id": request_id, "method": method}
        if params is not msgspec.UNSET:
            call["params"] = params
        try:
            self._write(call)
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RelayError(ErrorKind.TIMEOUT, f"codex did not answer {method} within {timeout:g}s") from None
        finally:
            self._pending.pop(request_id, None)

    def _write(self, msg: dict[str, Any]) -> None:
        if self.proc is None or self.proc.stdin is None or self.proc.stdin.is_closing():
            raise RelayError(ErrorKind.APPSERVER_CRASH, "codex app-server is not running")
        self.proc.stdin.write(encode_bytes(msg) + b"\n")
        self.traffic.record(">>", self.generation, msg)

    def _fail_pending(self, err: RelayError) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()

    async def _read_stdout(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            try:
                msg = msgspec.json.decode(line)
            except msgspec.DecodeError:
                msg = None
            if not isinstance(msg, dict):
                log(logger, logging.WARNING, "appserver_bad_line", node_id=self.config.node_id, line=line[:200])
                continue
            self.traffic.record("<<", self.generation, msg)
            if "method" in msg and "id" in msg:
                self.tasks.spawn(self._answer(proc, msg), "appserver-request")
            elif "method" in msg:
                self.on_notify(str(msg["method"]), msg.get("params") or {})
            elif (fut := self._pending.get(msg.get("id"))) is not None and not fut.done():  # type: ignore[arg-type]
                if "error" in msg:
                    err = msg["error"] or {}
                    fut.set_exception(RelayError(ErrorKind.APPSERVER_ERROR,
                                                 f"{err.get('code')}: {err.get('message')}"))
                else:
                    fut.set_result(msg.get("result"))

    async def _answer(self, proc: asyncio.subprocess.Process, msg: dict[str, Any]) -> None:
        """Server->client requests (approvals) are answered on the same child that asked, whatever happens:
        codex waits for the answer, so one left unanswered stalls its turn. The one exception is a request
        codex resolved itself: it waits for nothing, and a late answer would only be noise."""
        reply: dict[str, Any] | None
        try:
            result = await self.on_request(str(msg["method"]), msg.get("params") or {}, msg["id"])
            reply = None if result is None else {"id": msg["id"], "result": result}
        except RpcError as err:
            reply = {"id": msg["id"], "error": {"code": err.code, "message": err.message}}
        except RelayError as err:
            reply = {"id": msg["id"], "error": {"code": -32603, "message": err.error}}
        except Exception as exc:  # noqa: BLE001 - a bug here must still answer codex, and is logged
            log(logger, logging.ERROR, "server_request_failed", node_id=self.config.node_id, method=msg["method"],
                error=f"{type(exc).__name__}: {exc}")
            reply = {"id": msg["id"], "error": {"code": -32603, "message": f"the node failed: {type(exc).__name__}"}}
        if reply is not None and proc is self.proc and proc.stdin is not None and not proc.stdin.is_closing():
            self._write(reply)

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            log(logger, logging.DEBUG, "codex_stderr", node_id=self.config.node_id,
                line=line.decode(errors="replace").rstrip()[:500])
