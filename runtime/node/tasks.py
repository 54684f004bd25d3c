"""The node's task runner: a bounded FIFO of Codex turns, one at a time per thread, each run once.

A task_id seen before is never executed again: its ack and result are replayed instead.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from runtime.logfmt import log
from runtime.node.appserver import AppServer
from runtime.node.config import NodeConfig
from runtime.node.link import ManagerLink
from runtime.protocol import Decision, ErrorKind, RelayError, TaskState, new_id
from runtime.protocol import wire
from runtime.protocol.wire import TaskOutcome, failed_task

logger = logging.getLogger("codex_node")

# Finished tasks remembered for replays (task_sync after a reconnect, a repeated assign); the manager's DB
# is the lasting record, so a small window suffices, and keeps the node's memory flat.
KNOWN_MAX = 1_000
INTERRUPT_WAIT_S = 2.0  # an interrupted turn/completed follows turn/interrupt within ~20 ms (codex-offline.md)
APPROVAL_METHODS = {"item/commandExecution/requestApproval": "command", "item/fileChange/requestApproval": "file_change"}


@dataclass
class Turn:
    """What one running turn has said so far; filled by app-server notifications."""
    task_id: str
    trace_id: str
    chat_key: str | None
    text: str = ""
    messages: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    approvals_expired: int = 0
    turn_id: str | None = None
    last_progress: float = 0.0
    done: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class Task:
    task_id: str
    state: TaskState = TaskState.QUEUED
    result: TaskOutcome | None = None
    runner: asyncio.Task[None] | None = None
    stopped: RelayError | None = None  # why its runner was cancelled: the manager's timeout, or a drain


def classify(turn: dict[str, Any], errors: list[dict[str, Any]]) -> RelayError:
    """Map a failed turn to an error kind: a dropped or idle upstream stream is upstream_disconnect."""
    err = turn.get("error") or (errors[-1].get("error") if errors else None) or {}
    text = str(err.get("message") or "the turn failed without a message")
    info = str(err.get("codexErrorInfo") or "")
    if "stream disconnected" in text or "idle timeout" in text or info == "responseStreamDisconnected":
        return RelayError(ErrorKind.UPSTREAM_DISCONNECT, text)
    if info in ("internalServerError", "serverOverloaded", "usageLimitExceeded") or "response.failed" in text:
        return RelayError(ErrorKind.UPSTREAM_ERROR, text)
    return RelayError(ErrorKind.UPSTREAM_ERROR if info else ErrorKind.APPSERVER_ERROR, text)


class Runner:
    def __init__(self, config: NodeConfig, link: ManagerLink, app: AppServer) -> None:
        self.config = config
        self.link = link
        self.app = app
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.turns: dict[str, Turn] = {}             # by thread_id: one turn per thread at a time
        self.locks: dict[str, asyncio.Lock] = {}
        self.loaded: dict[str, int] = {}              # thread_id -> app-server generation that loaded it
        self.approvals: dict[str, asyncio.Future[str]] = {}
        self.draining = False

    def active(self) -> int:
        return sum(1 for t in self.tasks.values() if t.state in (TaskState.QUEUED, TaskState.RUNNING))

    # ---- from the manager --------------------------------------------------------------------
    async def on_assign(self, msg: wire.TaskAssign) -> None:
        task_id = msg.task_id
        if (known := self.tasks.get(task_id)) is not None:
            log(logger, logging.INFO, "duplicate_task_ignored", node_id=self.config.node_id, task_id=task_id,
                state=known.state.value)
            await self._report(known)
            return
        task = Task(task_id)
        self._remember(task)
        if self.draining:
            self._finish(task, failed_task(RelayError(ErrorKind.NODE_OFFLINE, "the node is shutting down and takes "
                                                   "no new work; send it again once it is back, or to another node")))
            await self._report(task)
            return
        if self.active() > self.config.max_pending:
            self._finish(task, failed_task(RelayError(
                ErrorKind.QUEUE_FULL, f"node queue full (max={self.config.max_pending})")))
            await self._report(task)
            return
        await self.link.send(wire.TaskAck(task_id=task_id, state=task.state.value))
        task.runner = self.link.tasks.spawn(self._run(task, msg), f"task-{task_id}")

    async def on_sync(self, msg: wire.TaskSync) -> None:
        for task_id in msg.task_ids:
            known = self.tasks.get(task_id)
            if known is not None:
                await self._report(known)
            elif (raw := self.link.results.frame(task_id)) is not None:
                await self.link.send_raw(raw)  # finished before a restart: the result is on disk
            else:
                await self.link.send(wire.TaskStateReport(task_id=task_id, state="unknown"))

    async def on_cancel(self, msg: wire.TaskCancel) -> None:
        task = self.tasks.get(msg.task_id)
        if task is not None and task.runner is not None and not task.runner.done():
            task.stopped = RelayError(ErrorKind.TIMEOUT, "cancelled by the manager after its timeout")
            task.runner.cancel()

    async def drain(self, timeout: float) -> None:
        """A SIGTERM: take no new work, let running turns finish within `timeout`, then interrupt the rest;
        each ends with a result (retriable when cut short), reported or kept on disk for the next start."""
        self.draining = True
        running = {t.runner: t for t in self.tasks.values() if t.runner is not None and not t.runner.done()}
        log(logger, logging.INFO, "node_draining", node_id=self.config.node_id, running=len(running),
            timeout_s=timeout)
        if not running:
            return
        _, late = await asyncio.wait(running, timeout=timeout)
        for runner in late:
            running[runner].stopped = RelayError(ErrorKind.NODE_OFFLINE, "the node shut down before the turn "
                                                 "finished (its drain timeout passed); send it again")
            runner.cancel()
        if late:
            await asyncio.wait(late, timeout=10)  # each interrupts its codex turn and reports its result

    async def on_decision(self, msg: wire.ApprovalDecision) -> None:
        fut = self.approvals.get(msg.approval_id)
        if fut is not None and not fut.done():
            fut.set_result(msg.decision.value)

    async def _report(self, task: Task) -> None:
        if task.result is not None:
            await self.link.send(wire.TaskResult(task_id=task.task_id, result=task.result))
        else:
            await self.link.send(wire.TaskStateReport(task_id=task.task_id, state=task.state.value))

    def _remember(self, task: Task) -> None:
        self.tasks[task.task_id] = task
        while len(self.tasks) > KNOWN_MAX:
            oldest = next(iter(self.tasks))
            if self.tasks[oldest].result is None:
                break  # never forget an unfinished task
            self.tasks.popitem(last=False)

    def _finish(self, task: Task, result: TaskOutcome) -> None:
        task.result = result
        task.state = TaskState.DONE if result.ok else TaskState.FAILED

    # ---- running a turn ----------------------------------------------------------------------
    async def _run(self, task: Task, msg: wire.TaskAssign) -> None:
        started = time.monotonic()
        turn = Turn(task.task_id, msg.trace_id, msg.chat_key)
        try:
            result = await asyncio.wait_for(self._turn(task, turn, msg), msg.timeout)
        except TimeoutError:
            result = failed_task(RelayError(ErrorKind.TIMEOUT, f"the turn did not finish within {msg.timeout:g}s"))
        except asyncio.CancelledError:
            result = failed_task(task.stopped or RelayError(ErrorKind.TIMEOUT, "cancelled by the manager after its timeout"))
        except RelayError as err:
            result = failed_task(err)
        result.duration_ms = round((time.monotonic() - started) * 1000, 1)
        self._finish(task, result)
        log(logger, logging.INFO, "task_final", node_id=self.config.node_id, task_id=task.task_id,
            trace_id=turn.trace_id, ok=result.ok, error_kind=result.error_kind, duration_ms=result.duration_ms)
        await self._report(task)
        await self._recycle_if_due()

    async def _recycle_if_due(self) -> None:
        """Between turns only: past a bound the codex child is restarted, and its threads resume when next used."""
        if self.active() or not self.app.idle:
            return
        c = self.config
        rss, fds = self.app.usage()
        threads = sum(1 for g in self.loaded.values() if g == self.app.generation)
        reasons = [f"{name} {value} >= {bound}" for name, value, bound in (
            ("rss_mb", rss >> 20, c.recycle_rss_mb), ("threads", threads, c.recycle_threads), ("fds", fds, c.recycle_fds))
            if bound and value >= bound]
        if not reasons:
            return
        old = self.app.generation
        if await self.app.recycle(", ".join(reasons)):
            # The new child's generation makes every thread resume on its next turn; what the node kept about
            # the old one's threads can go.
            self.loaded = {t: g for t, g in self.loaded.items() if g != old}
            for thread_id in [t for t, lock in self.locks.items() if not lock.locked() and t not in self.turns]:
                del self.locks[thread_id]

    async def _turn(self, task: Task, turn: Turn, msg: wire.TaskAssign) -> TaskOutcome:
        thread_id = msg.thread_id
        if thread_id is None:
            start: dict[str, Any] = {"cwd": self.config.cwd, "approvalPolicy": self.config.approval_policy,
                                     "sandbox": self.config.sandbox}
            if msg.model:
                start["model"] = msg.model
            started = await self.app.request("thread/start", start, self.config.rpc_timeout)
            thread_id = str(started["thread"]["id"])
            self.loaded[thread_id] = self.app.generation
        msg.thread_id = thread_id
        async with self.locks.setdefault(thread_id, asyncio.Lock()):
            task.state = TaskState.RUNNING
            await self.link.send(wire.TaskStateReport(task_id=task.task_id, state=task.state.value))
            if self.loaded.get(thread_id) != self.app.generation:
                # A restarted app-server has no threads loaded; resuming keeps the thread's history.
                # excludeTurns: the node needs the thread loaded, not its history (asking for it is deprecated).
                await self.app.request("thread/resume", {"threadId": thread_id, "excludeTurns": True},
                                       self.config.rpc_timeout)
                self.loaded[thread_id] = self.app.generation
            self.turns[thread_id] = turn
            generation = self.app.generation
            try:
                params: dict[str, Any] = {"threadId": thread_id, "input": [
                    {"type": "text", "text": msg.prompt, "text_elements": []}]}
                if msg.model:
                    params["model"] = msg.model
                started = await self.app.request("turn/start", params, self.config.rpc_timeout)
                turn.turn_id = started["turn"]["id"]
                done = await self._until_done(turn, generation)
            finally:
                # A turn cut short (the manager's timeout, a drain) is interrupted, and its interrupted completion
                # awaited, while this thread's lock is still held: the next turn on the thread must not start
                # before it has ended, or that completion would be taken for the next turn's.
                if turn.turn_id is not None and not turn.done.done():
                    await self._interrupt(thread_id, turn)
                self.turns.pop(thread_id, None)
        if done.get("status") == "completed":
            if turn.approvals_expired:
                return failed_task(RelayError(ErrorKind.APPROVAL_TIMEOUT), thread_id=thread_id, turn_id=turn.turn_id,
                                text=_final_text(turn, done))
            return TaskOutcome(ok=True, text=_final_text(turn, done), thread_id=thread_id, turn_id=turn.turn_id)
        return failed_task(classify(done, turn.errors), thread_id=thread_id, turn_id=turn.turn_id)

    async def _until_done(self, turn: Turn, generation: int) -> dict[str, Any]:
        """Wait for turn/completed, or fail if the app-server that runs the turn dies."""
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(turn.done), 0.25)
            except TimeoutError:
                if self.app.generation != generation or not self.app.ready.is_set():
                    raise RelayError(ErrorKind.APPSERVER_CRASH, "codex app-server exited during the turn; "
                                                                "the node restarted it") from None

    async def _interrupt(self, thread_id: str, turn: Turn) -> None:
        """Stop the turn, and wait (bounded) for codex to say it ended: an interrupted turn/completed follows."""
        try:
            await self.app.request("turn/interrupt", {"threadId": thread_id, "turnId": turn.turn_id}, 2)
            await asyncio.wait_for(asyncio.shield(turn.done), INTERRUPT_WAIT_S)
        except (RelayError, TimeoutError):
            pass  # the child is gone or the turn already ended: nothing left to stop

    # ---- from the app-server -----------------------------------------------------------------
    def on_notify(self, method: str, params: dict[str, Any]) -> None:
        turn = self.turns.get(params.get("threadId", ""))
        if turn is None:
            return
        if method == "item/agentMessage/delta":
            turn.text += params.get("delta", "")
            now = time.monotonic()
            if now - turn.last_progress >= self.config.progress_interval:
                turn.last_progress = now
                self.link.tasks.spawn(self.link.send(wire.TaskProgress(task_id=turn.task_id, chat_key=turn.chat_key,
                                                                       text=turn.text)), "progress")
        elif method == "item/completed" and (params.get("item") or {}).get("type") == "agentMessage":
            turn.messages.append(params["item"].get("text", ""))
            turn.text = ""
        elif method == "error":
            turn.errors.append(params)
        elif method == "turn/completed" and not turn.done.done():
            ended = params.get("turn") or {}
            if turn.turn_id is not None and ended.get("id") not in (None, turn.turn_id):
                return  # another turn's end on this thread (one cut short before this one started): not ours
            turn.done.set_result(ended)

    async def on_server_request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method not in APPROVAL_METHODS:
            raise RelayError(ErrorKind.APPSERVER_ERROR, f"the node does not handle {method}")
        turn = self.turns.get(params.get("threadId", ""))
        approval_id = new_id("appr")
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.approvals[approval_id] = fut
        await self.link.send(wire.ApprovalRequest(
            approval_id=approval_id, kind=APPROVAL_METHODS[method],
            task_id=turn.task_id if turn else None, trace_id=turn.trace_id if turn else None,
            chat_key=turn.chat_key if turn else None, thread_id=params.get("threadId"),
            command=params.get("command"), cwd=params.get("cwd"), reason=params.get("reason"),
            changes=params.get("changes")))
        try:
            decision = await asyncio.wait_for(fut, self.config.approval_timeout)
        except TimeoutError:
            decision = Decision.DECLINE.value
            if turn is not None:
                turn.approvals_expired += 1
            log(logger, logging.WARNING, "approval_expired", node_id=self.config.node_id, approval_id=approval_id,
                task_id=turn.task_id if turn else None)
            await self.link.send(wire.ApprovalExpired(approval_id=approval_id))
        finally:
            self.approvals.pop(approval_id, None)
        return {"decision": decision}


def _final_text(turn: Turn, done: dict[str, Any]) -> str:
    items = [i for i in done.get("items") or [] if i.get("type") == "agentMessage"]
    if items:
        return str(items[-1].get("text", ""))
    return turn.messages[-1] if turn.messages else turn.text
