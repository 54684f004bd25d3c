"""The node's task runner: a bounded FIFO of Codex turns, one at a time per thread, each run once.

A task_id seen before is never executed again: its ack and result are replayed instead.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from runtime.logfmt import log
from runtime.node.activity import Steps, add_usage
from runtime.node.appserver import AppServer
from runtime.node.approvals import Approvals
from runtime.node.config import NodeConfig
from runtime.node import roots
from runtime.node.link import ManagerLink
from runtime.node.readiness import Monitor
from runtime.protocol import ErrorKind, RelayError, TaskAction, TaskState, final_state
from runtime.protocol import wire
from runtime.protocol.wire import TaskOutcome, TokenUsage, failed_task
from runtime.throttle import Throttle

logger = logging.getLogger("codex_node")

# Finished tasks remembered for replays (task_sync after a reconnect, a repeated assign); the manager's DB
# is the lasting record, so a small window suffices, and keeps the node's memory flat.
KNOWN_MAX = 1_000
INTERRUPT_WAIT_S = 2.0  # an interrupted turn/completed follows turn/interrupt within ~20 ms (codex-offline.md)
STOP_GRACE = 5.0  # seconds codex gets to end a turn it was told to interrupt, before the node stops waiting for it
# codex 0.171's retry notice while the provider cannot be reached at all; it waits like this without end.
WAITING_FOR_NETWORK = "waiting for network"


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
    notes: list[str] = field(default_factory=list)  # requests the node refused for the user (refusals.py)
    thread_id: str | None = None
    turn_id: str | None = None
    # The turn codex runs now, as turn/started names it: a review runs as a turn of its own under turn_id (the id
    # its result and turn/completed carry), and only this one can be interrupted.
    active_id: str | None = None
    action: TaskAction = TaskAction.TURN
    compacted: bool = False      # codex completed the thread's compaction item (action compact)
    begun: asyncio.Event = field(default_factory=asyncio.Event)  # its turn_id is known, or it is over
    generation: int = 0          # the codex child that runs it: only that one can interrupt it
    starting: bool = False       # turn/start was sent: from here on, a stop goes through codex
    stop_requested: bool = False  # the user stopped it: an interrupted end is `cancelled`, not a failure
    steps: Steps = field(default_factory=Steps)   # its commands, file changes and tool calls, for the progress
    usage: TokenUsage | None = None
    progress: Throttle | None = None              # paces its progress frames (progress_interval)
    notice: str | None = None  # codex's latest retry notice, as the user reads it
    waiting_since: float | None = None  # since when codex waits for the network to reach the provider
    done: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class Task:
    task_id: str
    state: TaskState = TaskState.QUEUED
    result: TaskOutcome | None = None
    runner: asyncio.Task[None] | None = None
    stopped: RelayError | None = None  # why its runner was cancelled: the manager's timeout, a drain, a stop
    turn: Turn | None = None
    # The thread it runs on, once known; None if it ended without one. A task that follows it runs there too.
    thread: asyncio.Future[str | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def classify(turn: dict[str, Any], errors: list[dict[str, Any]]) -> RelayError:
    """Map a failed turn to an error kind, with codex's reason: a dropped or idle upstream stream is
    upstream_disconnect, a provider refusing the credentials upstream_unauthorized, one never reached
    provider_unreachable, any other provider failure (429, 5xx, retries exhausted) upstream_error."""
    err = turn.get("error") or (errors[-1].get("error") if errors else None) or {}
    if turn.get("status") == "interrupted" and not err:
        return RelayError(ErrorKind.APPSERVER_ERROR, "codex interrupted the turn without being asked to; "
                                                     "send the message again")
    text = str(err.get("message") or "the turn failed without a message")
    raw = err.get("codexErrorInfo")
    # codexErrorInfo is a name ("internalServerError") or {name: {"httpStatusCode": N}} (the app-server's schema).
    info, detail = next(iter(raw.items())) if isinstance(raw, dict) and raw else (str(raw or ""), None)
    status = detail.get("httpStatusCode") if isinstance(detail, dict) else None
    if "stream disconnected" in text or "idle timeout" in text or info == "responseStreamDisconnected":
        return RelayError(ErrorKind.UPSTREAM_DISCONNECT, text)
    if status in (401, 403) or info == "unauthorized":
        return RelayError(ErrorKind.UPSTREAM_UNAUTHORIZED, text)
    if info in ("httpConnectionFailed", "responseStreamConnectionFailed") and status is None:
        return RelayError(ErrorKind.PROVIDER_UNREACHABLE, text)
    if info in ("internalServerError", "serverOverloaded", "usageLimitExceeded") or "response.failed" in text:
        return RelayError(ErrorKind.UPSTREAM_ERROR, text)
    return RelayError(ErrorKind.UPSTREAM_ERROR if info else ErrorKind.APPSERVER_ERROR, text)


def retry_notice(message: str, details: Any) -> str:
    """codex's "Reconnecting... 2/5" and its details as a user reads them: "reconnecting 2/5: <reason>"."""
    step = message.removeprefix("Reconnecting...").strip()
    reason = str(details or "").split(", url: ")[0].strip()  # codex appends the request's URL: noise in a chat
    head = "reconnecting" if not step else f"reconnecting {step}" if step[0].isdigit() else f"reconnecting, {step}"
    return f"{head}: {reason}" if reason else head


class Runner:
    def __init__(self, config: NodeConfig, link: ManagerLink, app: AppServer, readiness: Monitor) -> None:
        self.config = config
        self.link = link
        self.app = app
        self.readiness = readiness
        self.tasks: OrderedDict[str, Task] = OrderedDict()
        self.turns: dict[str, Turn] = {}             # by thread_id: one turn per thread at a time
        self.locks: dict[str, asyncio.Lock] = {}
        self.waiting: Counter[str] = Counter()       # tasks waiting for a thread's running turn to end, by thread
        self.loaded: dict[str, int] = {}              # thread_id -> app-server generation that loaded it
        self.approvals = Approvals(config, link, self.turns.get)
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
        # Each task's life in the node's log, by its trace_id: received, turn started, codex's notices, final.
        log(logger, logging.INFO, "task_received", node_id=self.config.node_id, task_id=task_id, trace_id=msg.trace_id,
            chat_key=msg.chat_key, thread_id=msg.thread_id, timeout=msg.timeout)
        if self.draining:
            self._finish(task, failed_task(RelayError(ErrorKind.NODE_OFFLINE, "the node is shutting down and takes "
                                                   "no new work; send it again once it is back, or to another node")))
            self._log_final(task, msg.trace_id, msg.thread_id, None)
            await self._report(task)
            return
        if self.active() > self.config.max_pending:
            self._finish(task, failed_task(RelayError(
                ErrorKind.QUEUE_FULL, f"node queue full (max={self.config.max_pending})")))
            self._log_final(task, msg.trace_id, msg.thread_id, None)
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
        if task is None or task.runner is None or task.runner.done():
            return  # finished already: its one result stands
        if msg.reason != "user":
            task.stopped = RelayError(ErrorKind.TIMEOUT, "cancelled by the manager after its timeout")
            task.runner.cancel()
            return
        log(logger, logging.INFO, "task_stop_requested", node_id=self.config.node_id, task_id=task.task_id,
            trace_id=task.turn.trace_id if task.turn else None)
        turn = task.turn
        if turn is not None and turn.starting:
            # Codex has (or is about to have) the turn: interrupt it there, and let it end the turn itself, so
            # the thread is idle before the next turn on it starts.
            turn.stop_requested = True
            if turn.turn_id is not None:
                self.link.tasks.spawn(self._stop(task, turn), f"stop-{task.task_id}")
            return
        task.stopped = RelayError(ErrorKind.CANCELLED, "stopped before the turn started")
        task.runner.cancel()

    async def _stop(self, task: Task, turn: Turn) -> None:
        """Interrupt the turn in codex; if codex does not end it soon, stop waiting for it."""
        if await self._interrupt(turn):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(turn.done), STOP_GRACE)
                return
        if task.runner is not None and not task.runner.done():
            task.stopped = RelayError(ErrorKind.CANCELLED, "stopped; codex did not confirm the interrupt")
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
        await self.approvals.on_decision(msg)

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
        task.state = final_state(result.ok, result.error_kind)

    # ---- running a turn ----------------------------------------------------------------------
    async def _run(self, task: Task, msg: wire.TaskAssign) -> None:
        started = time.monotonic()
        turn = task.turn = Turn(task.task_id, msg.trace_id, msg.chat_key, steps=Steps(self.config.cwd))
        turn.progress = Throttle(self.config.progress_interval, lambda: self._send_progress(turn), self.link.tasks,
                                 f"progress-{task.task_id}")
        try:
            result = await asyncio.wait_for(self._turn(task, turn, msg), msg.timeout)
        except TimeoutError:
            result = failed_task(RelayError(ErrorKind.TIMEOUT, f"the turn did not finish within {msg.timeout:g}s"))
        except asyncio.CancelledError:
            result = failed_task(task.stopped or RelayError(ErrorKind.TIMEOUT, "cancelled by the manager after its timeout"))
        except RelayError as err:
            result = failed_task(err)
        finally:
            if turn.progress is not None:
                await turn.progress.close()  # the result carries the rest
            if turn.turn_id is not None and not turn.done.done():
                await self._interrupt(turn)
            turn.begun.set()
            if not task.thread.done():
                task.thread.set_result(None)
        # An approval still open has nobody waiting on it: closed as withdrawn, and codex gets no late answer.
        self.approvals.turn_ended(turn, "the turn was stopped" if result.error_kind == ErrorKind.CANCELLED
                                  else f"the turn ended ({result.error_kind or 'done'}) before anyone decided")
        if turn.notes:
            result.notes = turn.notes
        if turn.usage is not None:
            result.usage = turn.usage
        result.duration_ms = round((time.monotonic() - started) * 1000, 1)
        self._finish(task, result)
        self._log_final(task, turn.trace_id, result.thread_id or msg.thread_id, turn.turn_id)
        if result.error_kind == ErrorKind.PROVIDER_UNREACHABLE:
            self.readiness.poke()  # so the manager shows it before the next turn tries
        await self._report(task)
        await self._recycle_if_due()

    def _log_final(self, task: Task, trace_id: str, thread_id: str | None, turn_id: str | None) -> None:
        result = task.result
        assert result is not None
        log(logger, logging.INFO if result.ok else logging.WARNING, "task_final", node_id=self.config.node_id,
            task_id=task.task_id, trace_id=trace_id, thread_id=thread_id, turn_id=turn_id, ok=result.ok,
            error_kind=result.error_kind, error=None if result.ok else result.error, duration_ms=result.duration_ms)

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
        await self.readiness.admit()  # a node that cannot run turns says why now, not at the deadline
        images = self._images(msg.images)  # refused before codex starts anything
        thread_id = await self._thread_of(task, msg)
        if msg.steer and msg.action == TaskAction.TURN and \
                (steered := await self._steer(task, thread_id, msg, images)):
            return steered
        lock = self.locks.setdefault(thread_id, asyncio.Lock())
        if lock.locked():
            # The chat queues: a turn runs on this thread, and this one runs right after it. The user is told.
            self.link.tasks.spawn(self.link.send(wire.TaskProgress(task_id=task.task_id, chat_key=msg.chat_key,
                                                                   queued=True)), "progress")
            log(logger, logging.INFO, "task_queued", node_id=self.config.node_id, task_id=task.task_id,
                trace_id=turn.trace_id, thread_id=thread_id)
        with self._waiting_on(thread_id):
            await lock.acquire()
        try:
            return await self._on_thread(task, turn, msg, thread_id, images)
        finally:
            lock.release()

    async def _thread_of(self, task: Task, msg: wire.TaskAssign) -> str:
        """The thread the task runs on: the chat's; the one the chat's previous task is starting (`follows`); or,
        for a turn, a new one."""
        thread_id = msg.thread_id
        if thread_id is None and msg.follows and (prior := self.tasks.get(msg.follows)) is not None:
            thread_id = await asyncio.shield(prior.thread)  # None: it ended before it had a thread
        if thread_id is None:
            if msg.action != TaskAction.TURN:
                raise RelayError(ErrorKind.INVALID_REQUEST, f"this chat has no Codex thread yet, so there is nothing "
                                                            f"to {msg.action.value}: send a message first")
            thread_id = await self._start_thread(msg, self._place(msg.settings))
        msg.thread_id = thread_id
        task.thread.set_result(thread_id)
        return thread_id

    @contextlib.contextmanager
    def _waiting_on(self, thread_id: str) -> Iterator[None]:
        self.waiting[thread_id] += 1
        try:
            yield
        finally:
            self.waiting[thread_id] -= 1
            if not self.waiting[thread_id]:
                del self.waiting[thread_id]

    async def _steer(self, task: Task, thread_id: str, msg: wire.TaskAssign,
                     images: list[dict[str, Any]]) -> TaskOutcome | None:
        """Add the prompt to the chat's turn running on the thread (turn/steer); None when no running turn took it
        (none runs, another chat's does, it is ending or being stopped, another task waits for it), so the prompt
        runs as its own turn."""
        turn = self.turns.get(thread_id)
        if turn is None or turn.chat_key != msg.chat_key or self.waiting.get(thread_id) or \
                turn.action != TaskAction.TURN:
            return None
        with contextlib.suppress(TimeoutError):  # turn/start may still be on its way: its id comes a moment later
            await asyncio.wait_for(turn.begun.wait(), self.config.rpc_timeout)
        if turn.turn_id is None or turn.done.done() or turn.stop_requested or turn.generation != self.app.generation:
            return None
        params = {"threadId": thread_id, "expectedTurnId": turn.turn_id,
                  "input": [{"type": "text", "text": msg.prompt, "text_elements": []}, *images]}
        try:
            await self.app.request("turn/steer", params, self.config.rpc_timeout)
        except RelayError as err:
            if err.kind != ErrorKind.APPSERVER_ERROR:
                # No answer: codex may have taken the input, so running it again could run it twice.
                raise RelayError(ErrorKind.APPSERVER_ERROR, f"codex did not confirm adding the message to the "
                                 f"running turn ({err.error}); it may have reached that turn, so it was not run "
                                 "again") from None
            # codex said no (that turn ended just now): it did not take the input, which runs on its own next.
            log(logger, logging.INFO, "steer_refused", node_id=self.config.node_id, task_id=task.task_id,
                into=turn.task_id, error=err.error)
            return None
        log(logger, logging.INFO, "task_steered", node_id=self.config.node_id, task_id=task.task_id,
            trace_id=msg.trace_id, into=turn.task_id, thread_id=thread_id, turn_id=turn.turn_id)
        return TaskOutcome(ok=True, steered_into=turn.task_id, thread_id=thread_id, turn_id=turn.turn_id)

    async def _on_thread(self, task: Task, turn: Turn, msg: wire.TaskAssign, thread_id: str,
                         images: list[dict[str, Any]]) -> TaskOutcome:
        """The task's turn, holding its thread: no other turn of this node runs there meanwhile."""
        task.state = TaskState.RUNNING
        await self.link.send(wire.TaskStateReport(task_id=task.task_id, state=task.state.value))
        if self.loaded.get(thread_id) != self.app.generation:
            thread_id = msg.thread_id = await self._resume(msg, thread_id, self._place(msg.settings))
        self.turns[thread_id] = turn
        turn.thread_id, turn.generation, turn.action = thread_id, self.app.generation, msg.action
        try:
            turn.starting = True
            await self._start(turn, msg, images)
            log(logger, logging.INFO, "turn_started", node_id=self.config.node_id, task_id=task.task_id,
                trace_id=turn.trace_id, thread_id=thread_id, turn_id=turn.turn_id, action=msg.action.value)
            if turn.stop_requested:  # stopped while turn/start was on its way
                await self._interrupt(turn)
            done = await self._until_done(turn, turn.generation)
        finally:
            # A turn cut short (the manager's timeout, a drain) is interrupted, and its interrupted completion
            # awaited, while this thread's lock is still held: the next turn on the thread must not start before it
            # has ended, or that completion would be taken for the next turn's (found by the torture soak).
            if turn.turn_id is not None and not turn.done.done():
                await self._interrupt(turn, wait=True)
            self.turns.pop(thread_id, None)
        if done.get("status") == "interrupted" and turn.stop_requested:
            return failed_task(RelayError(ErrorKind.CANCELLED, "stopped at the user's request"), thread_id=thread_id,
                               turn_id=turn.turn_id)
        if done.get("status") == "completed":
            if turn.approvals_expired:
                return failed_task(RelayError(ErrorKind.APPROVAL_TIMEOUT), thread_id=thread_id, turn_id=turn.turn_id,
                                   text=_final_text(turn, done))
            if msg.action == TaskAction.COMPACT and not turn.compacted:
                return failed_task(RelayError(ErrorKind.APPSERVER_ERROR, "codex ended the compaction turn without "
                                              "compacting the thread"), thread_id=thread_id, turn_id=turn.turn_id)
            return TaskOutcome(ok=True, text=_final_text(turn, done), thread_id=thread_id, turn_id=turn.turn_id)
        return failed_task(classify(done, turn.errors), thread_id=thread_id, turn_id=turn.turn_id)

    def _images(self, images: list[str] | None) -> list[dict[str, Any]]:
        """codex's `localImage` inputs for the user's images: each must be a file inside the node's allowed roots
        (they are uploads, saved by runtime/node/files.py), judged on its real path."""
        out = []
        for path in images or ():
            try:
                real = os.path.realpath(path, strict=True)
            except (OSError, ValueError):
                raise RelayError(ErrorKind.NOT_FOUND, f"the image {path} is not on the node (any more)") from None
            if roots.within(real, self.config.allowed_roots) is None or not os.path.isfile(real):
                raise RelayError(ErrorKind.PATH_NOT_ALLOWED, f"the image {path} is not a file inside the node's "
                                                             f"allowed roots ({', '.join(self.config.allowed_roots)})")
            out.append({"type": "localImage", "path": real})
        return out

    def _place(self, settings: wire.ThreadSettings | None) -> dict[str, Any]:
        """thread/start's and thread/resume's settings: the chat's choice, else the node's; a chosen cwd is checked
        again here (the node's roots may have narrowed since), and only a chosen one is passed on resume."""
        s = settings or wire.ThreadSettings()
        place: dict[str, Any] = {"approvalPolicy": s.approval_policy or self.config.approval_policy,
                                 "sandbox": s.sandbox or self.config.sandbox}
        if s.cwd:
            place["cwd"] = roots.resolve(s.cwd, self.config.cwd, self.config.allowed_roots)
        return place

    async def _start_thread(self, msg: wire.TaskAssign, place: dict[str, Any]) -> str:
        start = {"cwd": self.config.cwd, **place}
        if msg.model:
            start["model"] = msg.model
        started = await self.app.request("thread/start", start, self.config.rpc_timeout)
        thread_id = str(started["thread"]["id"])
        self.loaded[thread_id] = self.app.generation
        return thread_id

    async def _resume(self, msg: wire.TaskAssign, thread_id: str, place: dict[str, Any]) -> str:
        """A restarted app-server has no threads loaded; resuming keeps the thread's history (excludeTurns: the node
        needs it loaded, not its history, whose full form is deprecated). Codex keeps nothing of a thread that had
        no turn yet, so one started by /thread start before a restart is started again with the same settings."""
        try:
            await self.app.request("thread/resume", {"threadId": thread_id, "excludeTurns": True, **place},
                                   self.config.rpc_timeout)
        except RelayError as err:
            if err.kind != ErrorKind.APPSERVER_ERROR or "no rollout found" not in err.error:
                raise
            replaced, thread_id = thread_id, await self._start_thread(msg, place)
            log(logger, logging.INFO, "thread_replaced", node_id=self.config.node_id, task_id=msg.task_id,
                thread_id=thread_id, replaced=replaced, reason="it had no turns when codex restarted")
            return thread_id
        self.loaded[thread_id] = self.app.generation
        return thread_id

    def relayed(self, method: str, params: Any, answer: Any) -> None:
        """What a relayed call did to the threads loaded in this child: one it started, forked or resumed is loaded
        (resuming it again would fail while it has no turns), an archived one is not."""
        if method in ("thread/start", "thread/fork", "thread/resume") and isinstance(answer, dict):
            thread = answer.get("thread")
            if isinstance(thread, dict) and isinstance(thread.get("id"), str):
                self.loaded[thread["id"]] = self.app.generation
        elif method == "thread/archive" and isinstance(params, dict):
            self.loaded.pop(str(params.get("threadId")), None)
    async def _start(self, turn: Turn, msg: wire.TaskAssign, images: list[dict[str, Any]]) -> None:
        """Ask codex for the task's turn; its turn_id is known when this returns."""
        thread_id = turn.thread_id
        if msg.action == TaskAction.COMPACT:
            # thread/compact/start answers {}: the compaction's turn is named by the turn/started that follows.
            await self.app.request("thread/compact/start", {"threadId": thread_id}, self.config.rpc_timeout)
            await asyncio.wait_for(turn.begun.wait(), self.config.rpc_timeout)
            return
        params: dict[str, Any]
        if msg.action == TaskAction.REVIEW:
            method, params = "review/start", {"threadId": thread_id, "target": {"type": "uncommittedChanges"},
                                              "delivery": "inline"}
        else:
            method, params = "turn/start", {"threadId": thread_id, "input": [
                {"type": "text", "text": msg.prompt, "text_elements": []}, *images]}
            if msg.model:
                params["model"] = msg.model
            if msg.effort:
                params["effort"] = msg.effort
        started = await self.app.request(method, params, self.config.rpc_timeout)
        turn.turn_id = started["turn"]["id"]
        turn.begun.set()

    async def _until_done(self, turn: Turn, generation: int) -> dict[str, Any]:
        """Wait for turn/completed, or fail if the app-server that runs the turn dies."""
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(turn.done), 0.25)
            except TimeoutError:
                if self.app.generation != generation or not self.app.ready.is_set():
                    raise RelayError(ErrorKind.APPSERVER_CRASH, "codex app-server exited during the turn; "
                                                                "the node restarted it") from None
                # codex waits for an unreachable provider without end: past provider_wait the node gives up for it.
                if turn.waiting_since is not None and \
                        (waited := time.monotonic() - turn.waiting_since) > self.config.provider_wait:
                    raise RelayError(ErrorKind.PROVIDER_UNREACHABLE, f"codex waited {waited:.0f}s for the network to "
                                     f"the model provider ({turn.notice})") from None

    async def _interrupt(self, turn: Turn, wait: bool = False) -> bool:
        """turn/interrupt to the codex child running the turn; False when that child is gone (a new one never had
        the thread, so there is nothing to interrupt) or the turn already ended. With `wait`, also wait (bounded)
        for codex to say the turn ended: an interrupted turn/completed follows."""
        if self.app.generation != turn.generation or not self.app.ready.is_set():
            return False
        try:
            await self.app.request("turn/interrupt", {"threadId": turn.thread_id,
                                                      "turnId": turn.active_id or turn.turn_id}, 2)
        except RelayError:
            return False
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(turn.done), INTERRUPT_WAIT_S)
        return True

    # ---- from the app-server -----------------------------------------------------------------
    def on_notify(self, method: str, params: dict[str, Any]) -> None:
        if method == "serverRequest/resolved":
            self.approvals.on_resolved(params)
            return
        turn = self.turns.get(params.get("threadId", ""))
        if turn is None:
            return
        if method != "error":
            turn.waiting_since = None  # codex got through again
        if method == "item/agentMessage/delta":
            turn.text += params.get("delta", "")
            self._progressed(turn)
        elif method == "item/completed" and (params.get("item") or {}).get("type") == "agentMessage":
            turn.messages.append(params["item"].get("text", ""))
            turn.text = ""
        elif method == "item/completed" and (params.get("item") or {}).get("type") == "contextCompaction":
            turn.compacted = True
        elif method == "turn/started" and turn.starting:
            turn.active_id = str((params.get("turn") or {}).get("id") or "") or None
            if turn.turn_id is None:  # a compaction's turn is named only here
                turn.turn_id = turn.active_id
                turn.begun.set()
        elif method in ("item/started", "item/completed"):
            if turn.steps.on_item(params.get("item") or {}):
                self._progressed(turn)
        elif method == "thread/tokenUsage/updated":
            turn.usage = add_usage(turn.usage, params)
        elif method == "error":
            turn.errors.append(params)
            self._codex_error(turn, params)
        elif method == "turn/completed" and not turn.done.done():
            ended = params.get("turn") or {}
            if turn.turn_id is not None and ended.get("id") not in (None, turn.turn_id):
                return  # another turn's end on this thread (one cut short before this one started): not ours
            turn.done.set_result(ended)

    def _codex_error(self, turn: Turn, params: dict[str, Any]) -> None:
        """codex's own error and retry notices: each in the node's log; a retry also goes to the user at once."""
        err = params.get("error") or {}
        message, details = str(err.get("message") or ""), err.get("additionalDetails")
        retrying = bool(params.get("willRetry"))
        log(logger, logging.WARNING, "codex_retry" if retrying else "codex_error", node_id=self.config.node_id,
            task_id=turn.task_id, trace_id=turn.trace_id, thread_id=params.get("threadId"),
            turn_id=params.get("turnId"), error=message, details=details, codex_error_info=err.get("codexErrorInfo"))
        if not retrying:
            return
        turn.notice = retry_notice(message, details)
        if WAITING_FOR_NETWORK in message and turn.waiting_since is None:
            turn.waiting_since = time.monotonic()
        self.link.tasks.spawn(self._send_progress(turn, turn.notice), "progress")

    async def on_server_request(self, method: str, params: dict[str, Any], request_id: Any) -> dict[str, Any] | None:
        return await self.approvals.on_request(method, params, request_id)

    # ---- progress ------------------------------------------------------------------------------
    @staticmethod
    def _progressed(turn: Turn) -> None:
        if turn.progress is not None:
            turn.progress.poke()

    async def _send_progress(self, turn: Turn, notice: str | None = None) -> None:
        """The turn as it stands: the agent's latest text (the one streaming, else the last finished) and steps;
        with codex's retry notice when one is why it goes (the next frame, codex having got through, has none)."""
        text = turn.text or (turn.messages[-1] if turn.messages else "")
        await self.link.send(wire.TaskProgress(task_id=turn.task_id, chat_key=turn.chat_key, text=text,
                                               activity=turn.steps.latest(), earlier=turn.steps.earlier,
                                               notice=notice))


def _final_text(turn: Turn, done: dict[str, Any]) -> str:
    items = [i for i in done.get("items") or [] if i.get("type") == "agentMessage"]
    if items:
        return str(items[-1].get("text", ""))
    return turn.messages[-1] if turn.messages else turn.text
