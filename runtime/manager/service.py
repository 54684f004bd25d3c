"""The manager's operations: dispatch, app-server relay, results, approvals, tokens, sweeps.

The control API and the node socket both call into here, so each rule is written once.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec

from runtime.aiotasks import Background
from runtime.logfmt import log
from runtime.manager.config import ManagerConfig
from runtime.manager.hub import Hub, NodeSession
from runtime.manager.sender import Limits
from runtime.manager.throttle import AuthThrottle
from runtime.manager.store import Store
from runtime.protocol import (CLOSE_REVOKED, CLOSE_SILENT, FINAL_STATES, SESSION_PROTOCOL, ApprovalKind, ApprovalState,
                              Decision, ErrorKind, RelayError, TaskAction, TaskState, new_id, parse_kind)
from runtime.protocol import wire
from runtime.protocol.wire import RpcOutcome, TaskOutcome

logger = logging.getLogger("codex_manager")
LAST_SEEN_FLUSH = 30.0  # seconds between writes of live nodes' last_seen to the DB
PRUNE_EVERY = 10  # sweeps between retention passes: pruning is not urgent, and a sweep must stay short
PRUNE_BATCH = 1000  # rows per table per pass, so one pass never holds the write lock for long

DECISION_STATE = {Decision.ACCEPT: ApprovalState.APPROVED, Decision.ACCEPT_FOR_SESSION: ApprovalState.APPROVED,
                  Decision.DECLINE: ApprovalState.DECLINED, Decision.CANCEL: ApprovalState.DECLINED}


class Manager:
    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self.store = Store(config.db, config.busy_timeout_ms)
        self.hub = Hub()
        self.tasks = Background(logger)
        self.limits = Limits(config.send_budget, config.send_timeout, config.close_timeout)
        self.throttle = AuthThrottle(config.auth_failures, config.auth_window)
        self.started_at = time.time()
        self.unstored: dict[str, tuple[str | None, TaskOutcome]] = {}  # results that met a locked DB

    async def start(self) -> None:
        await self.store.open()
        await self.store.mark_all_offline()
        self.tasks.spawn(self._sweep_forever(), "sweep")

    async def stop(self) -> None:
        await self.tasks.close()
        await self.store.close()

    async def publish(self, event: wire.EventFrame) -> None:
        """A result or approval event is numbered and kept before it goes out, so a client that was away
        (a restarted bot) gets it on reconnect; if the DB refuses, it still goes out live."""
        try:
            frame = await self.store.add_event(event)
        except RelayError:
            self.hub.counters["events_unnumbered"] += 1
            event.seq, frame = 0, None
        self.hub.publish(event, frame)

    # ---- sessions ---------------------------------------------------------------------------
    async def session_closed(self, session: NodeSession) -> None:
        if self.hub.sessions.get(session.node_id) is not session:
            return  # a newer session replaced this one; the node stays online
        del self.hub.sessions[session.node_id]
        self.hub.fail_rpcs(session.node_id, RpcOutcome(ok=False, **RelayError(
            ErrorKind.NODE_OFFLINE, f"node {session.node_id} disconnected before it answered").fields()))
        log(logger, logging.INFO, "node_offline", node_id=session.node_id, session_id=session.session_id)
        self.hub.publish(wire.NodeOffline(node_id=session.node_id))
        with contextlib.suppress(RelayError):
            await self.store.node_offline(session.node_id, session.last_seen)

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        if not await self.store.revoke_token(token_id):
            raise RelayError(ErrorKind.NOT_FOUND, f"no active token {token_id!r}: see /api/tokens")
        sessions = self.hub.sessions_for_token(token_id)
        closed = [s.node_id for s in sessions]
        # Each close is bounded, and they run side by side: a node that stopped reading cannot hold up revoke.
        await asyncio.gather(*(s.sender.close(CLOSE_REVOKED, b"token revoked") for s in sessions))
        log(logger, logging.INFO, "token_revoked", token_id=token_id, closed=",".join(closed))
        return {"token_id": token_id, "closed_sessions": closed}

    # ---- tasks ------------------------------------------------------------------------------
    async def dispatch(self, node_id: str, prompt: str, timeout: float, trace_id: str,
                       task_id: str | None = None, chat_key: str | None = None, thread_id: str | None = None,
                       model: str | None = None, effort: str | None = None,
                       settings: wire.ThreadSettings | None = None, action: TaskAction = TaskAction.TURN,
                       steer: bool = False, follows: str | None = None,
                       images: list[str] | None = None) -> dict[str, Any]:
        """Run one prompt on a node and wait for its one final result, or fail it as timed out."""
        if task_id is not None and (existing := await self.store.task(task_id)) is not None:
            return await self._await_existing(existing, timeout)
        session = self.hub.online(node_id)
        if session is None:
            raise RelayError(ErrorKind.NODE_OFFLINE, f"node {node_id!r} is offline: wait for it or pick another node")
        if action != TaskAction.TURN and session.protocol < SESSION_PROTOCOL:
            raise RelayError(ErrorKind.INVALID_REQUEST, f"node {node_id} runs an older Codex Relay (protocol "
                             f"{session.protocol}), which cannot {action.value}: upgrade that node")
        assign = wire.TaskAssign(task_id=task_id or new_id("task"), trace_id=trace_id, node_id=node_id,
                                 chat_key=chat_key, prompt=prompt, thread_id=thread_id, model=model, effort=effort,
                                 settings=settings, timeout=timeout, action=action, steer=steer, follows=follows,
                                 images=images or None)
        frame = wire.encode_frame(assign)  # refused here if it cannot reach the node in one frame
        if not await self.store.create_task(assign, deadline=time.time() + timeout):
            return await self._await_existing(await self.store.task(assign.task_id), timeout)
        waiter = self.hub.wait_task(assign.task_id)
        if not session.send(frame):
            return await self._fail(assign.task_id, RelayError(ErrorKind.NODE_OFFLINE,
                                                               "the node went away during dispatch"))
        await self.store.advance_task(assign.task_id, TaskState.ASSIGNED)
        log(logger, logging.INFO, "task_assigned", trace_id=trace_id, node_id=node_id, task_id=assign.task_id)
        return await self._await_result(assign.task_id, waiter, timeout, session)

    async def _await_existing(self, task: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        """A repeated task_id never runs twice: answer with what the first one became."""
        if task is None:
            raise RelayError(ErrorKind.INTERNAL, "a task vanished between two reads")
        self.hub.counters["duplicate_dispatch"] += 1
        if task["result"] is not None:
            return {**task["result"], "task_id": task["task_id"], "duplicate": True}
        waiter = self.hub.wait_task(task["task_id"])
        return await self._await_result(task["task_id"], waiter, timeout, None)

    async def _await_result(self, task_id: str, waiter: asyncio.Future[dict[str, Any]], timeout: float,
                            session: NodeSession | None) -> dict[str, Any]:
        """Wait for the result; the first caller's timeout (it holds the session) fails the task."""
        try:
            result = await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            err = RelayError(ErrorKind.TIMEOUT, f"no result within {timeout:g}s")
            if session is None:  # a repeated caller gave up waiting; the task itself goes on
                return {**wire.failed(err), "task_id": task_id}
            session.send(wire.TaskCancel(task_id=task_id))
            return await self._fail(task_id, err)
        return {**result, "task_id": task_id}

    async def _fail(self, task_id: str, err: RelayError) -> dict[str, Any]:
        """The manager's own verdict; if the node's result won the race, that one stands."""
        final = await self.accept_result(None, task_id, wire.failed_task(err))
        return {**(final or wire.failed(err)), "task_id": task_id}

    async def accept_result(self, node_id: str | None, task_id: str, result: TaskOutcome) -> dict[str, Any] | None:
        """Record a task's final result once; another node's is refused, orphans and duplicates are counted
        and ignored. `node_id` None is the manager's own verdict."""
        task = await self.owned_task(node_id, task_id)
        if task is None:
            self.hub.counters["orphan_results"] += 1
            log(logger, logging.WARNING, "orphan_result_ignored", node_id=node_id, task_id=task_id)
            return None
        clean: dict[str, Any] = msgspec.to_builtins(result)
        try:
            finished = await self.store.finish_task(task_id, clean)
        except RelayError:
            # The node counts this result as delivered: keep it and store it once the DB answers again.
            self.unstored[task_id] = (node_id, result)
            self.hub.counters["results_deferred"] += 1
            log(logger, logging.WARNING, "result_deferred", node_id=node_id, task_id=task_id, reason="storage_error")
            return None
        self.unstored.pop(task_id, None)
        if finished is None:
            self.hub.counters["duplicate_results"] += 1
            log(logger, logging.INFO, "duplicate_result_ignored", node_id=node_id, task_id=task_id)
            previous: dict[str, Any] | None = task["result"]
            return previous
        self.hub.counters[f"tasks_{finished['state']}"] += 1
        log(logger, logging.INFO, "task_final", trace_id=task["trace_id"], node_id=task["node_id"], task_id=task_id,
            state=finished["state"], error_kind=clean.get("error_kind"))
        ended = "the turn was stopped" if finished["state"] == TaskState.CANCELLED else "the task ended first"
        for approval_id in finished["withdrawn_approvals"]:
            await self.publish(wire.ApprovalResolved(approval_id=approval_id, state=ApprovalState.WITHDRAWN.value,
                                                     decided_by="task_ended", reason=ended))
        self.hub.resolve_task(task_id, clean)
        await self.publish(wire.TaskResultEvent(task_id=task_id, node_id=task["node_id"], chat_key=task["chat_key"],
                                                trace_id=task["trace_id"], result=result))
        return clean

    async def owned_task(self, node_id: str | None, task_id: str) -> dict[str, Any] | None:
        """The task, if it exists and (with a node_id) was given to that node; another node's is refused."""
        task = await self.store.task(task_id)
        if task is not None and node_id is not None and task["node_id"] != node_id:
            self.hub.counters["foreign_messages"] += 1
            raise RelayError(ErrorKind.INVALID_REQUEST, f"task {task_id!r} was not assigned to node {node_id!r}")
        return task

    async def stop_tasks(self, task_id: str | None, chat_key: str | None, stopped_by: str, admin: bool) -> dict[str, Any]:
        """Ask the nodes to stop a task, or a chat's running turns. Each node interrupts its codex turn, and each
        task still ends with its one result (state `cancelled`, or whatever it had become first)."""
        if task_id is not None:
            task = await self.store.task(task_id)
            if task is None:
                raise RelayError(ErrorKind.NOT_FOUND, f"no task {task_id!r}")
            if chat_key is not None and not admin and task["chat_key"] != chat_key:
                self.hub.counters["stops_forbidden"] += 1
                raise RelayError(ErrorKind.FORBIDDEN, f"task {task_id} belongs to another chat: only that chat's "
                                                      "users or an admin may stop it")
            if task["state"] in FINAL_STATES:
                raise RelayError(ErrorKind.CONFLICT, f"task {task_id} already finished ({task['state']})")
            targets = [task]
        elif chat_key is not None:
            targets = await self.store.open_tasks(chat_key=chat_key)
            if not targets:
                raise RelayError(ErrorKind.NOT_FOUND, "no turn is running in this chat: nothing to stop")
        else:
            raise RelayError(ErrorKind.INVALID_REQUEST, "pass `task_id`, or `chat_key` to stop a chat's running turns")
        stopping = []
        for t in targets:
            session = self.hub.online(t["node_id"])
            if session is not None and session.send(wire.TaskCancel(task_id=t["task_id"], reason="user")):
                stopping.append(t["task_id"])
            log(logger, logging.INFO, "task_stop_requested", trace_id=t["trace_id"], node_id=t["node_id"],
                task_id=t["task_id"], stopped_by=stopped_by, delivered=session is not None)
        if not stopping:
            raise RelayError(ErrorKind.NODE_OFFLINE, f"node {targets[0]['node_id']} is offline, so the turn cannot be "
                                                     "stopped now; it ends at its deadline")
        return {"stopping": stopping}

    async def accept_task_state(self, node_id: str, task_id: str, state: str) -> None:
        if state == "unknown":
            # The node restarted and lost the task before finishing it: fail it, never re-run it.
            await self.accept_result(node_id, task_id, wire.failed_task(RelayError(
                ErrorKind.NODE_OFFLINE, "the node restarted before the task finished; it did not run "
                                        "to completion. Retry it.")))
        elif state == TaskState.RUNNING:
            await self.store.advance_task(task_id, TaskState.RUNNING)

    # ---- app-server relay -------------------------------------------------------------------
    async def appserver(self, node_id: str, method: str, params: dict[str, Any] | msgspec.UnsetType, timeout: float,
                        trace_id: str) -> RpcOutcome:
        session = self.hub.online(node_id)
        if session is None:
            raise RelayError(ErrorKind.NODE_OFFLINE, f"node {node_id!r} is offline: wait for it or pick another node")
        request_id = new_id("rpc")
        frame = wire.encode_frame(wire.AppserverRequest(request_id=request_id, trace_id=trace_id, method=method,
                                                        params=params, timeout=timeout))
        waiter = self.hub.wait_rpc(node_id, request_id)
        session.send(frame)
        try:
            answer = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            self.hub.rpc_waiters.pop(request_id, None)
            raise RelayError(ErrorKind.TIMEOUT, f"{method} got no answer within {timeout:g}s") from None
        if not isinstance(answer, RpcOutcome):
            raise RelayError(ErrorKind.INTERNAL, f"node {node_id!r} answered {method} with a file reply")
        return answer

    # ---- files ------------------------------------------------------------------------------
    async def files(self, chat_key: str, node_id: str | None, request: wire.FileRequest) -> wire.FileOutcome:
        """A file operation in the directory of the chat's thread on its node; the node checks every path."""
        chat = await self.store.chat(chat_key)
        node_id = node_id or chat["node_id"]
        if not node_id:
            raise RelayError(ErrorKind.INVALID_REQUEST, "this chat has no node yet: pick one with /node first")
        session = self.hub.online(node_id)
        if session is None:
            raise RelayError(ErrorKind.NODE_OFFLINE, f"node {node_id!r} is offline: wait for it or pick another node")
        request.cwd = (chat["bindings"].get(node_id) or {}).get("cwd") or None
        frame = wire.encode_frame(request)
        waiter = self.hub.wait_rpc(node_id, request.request_id)
        session.send(frame)
        try:
            answer = await asyncio.wait_for(waiter, request.timeout)
        except TimeoutError:
            self.hub.rpc_waiters.pop(request.request_id, None)
            raise RelayError(ErrorKind.TIMEOUT, f"the file {request.op} got no answer within {request.timeout:g}s") \
                from None
        if not answer.ok:
            raise RelayError(parse_kind(answer.error_kind), answer.error)
        if not isinstance(answer, wire.FileOutcome):
            raise RelayError(ErrorKind.INTERNAL, f"node {node_id!r} answered a file {request.op} with another reply")
        return answer

    # ---- approvals --------------------------------------------------------------------------
    async def approval_requested(self, node_id: str, msg: wire.ApprovalRequest) -> None:
        if await self.store.add_approval(node_id, msg):
            log(logger, logging.INFO, "approval_requested", node_id=node_id, task_id=msg.task_id,
                approval_id=msg.approval_id, trace_id=msg.trace_id)
            await self.publish(wire.ApprovalRequested(approval=wire.PendingApproval(
                node_id=node_id, **msgspec.structs.asdict(msg))))

    async def close_approval(self, node_id: str, approval_id: str, state: ApprovalState, decided_by: str,
                             reason: str | None = None) -> None:
        """A node closed a pending approval without a user's decision: expired on its timer, or withdrawn by codex.
        Only the node it came from may; once closed, a late decision finds it decided."""
        approval = await self.store.approval(approval_id)
        if approval is not None and approval["node_id"] != node_id:
            self.hub.counters["foreign_messages"] += 1
            raise RelayError(ErrorKind.INVALID_REQUEST, f"approval {approval_id!r} belongs to another node")
        decision = "decline" if state == ApprovalState.EXPIRED else None
        if await self.store.decide_approval(approval_id, state, decision, decided_by):
            log(logger, logging.INFO, f"approval_{state.value}", node_id=node_id, approval_id=approval_id,
                task_id=approval and approval.get("task_id"), reason=reason)
            await self.publish(wire.ApprovalResolved(approval_id=approval_id, state=state.value, decision=decision,
                                                     decided_by=decided_by, reason=reason))

    async def decide(self, approval_id: str, decision: Decision, decided_by: str, chat_key: str | None = None,
                     admin: bool = False, answers: dict[str, list[str]] | None = None) -> dict[str, Any]:
        approval = await self.store.approval(approval_id)
        if approval is None:
            raise RelayError(ErrorKind.NOT_FOUND, f"no approval {approval_id!r}: see /api/approvals")
        if chat_key is not None and not admin and approval.get("chat_key") != chat_key:
            self.hub.counters["decisions_forbidden"] += 1
            log(logger, logging.WARNING, "approval_decide_forbidden", approval_id=approval_id, chat_key=chat_key,
                decided_by=decided_by)
            raise RelayError(ErrorKind.FORBIDDEN, f"approval {approval_id} belongs to another chat: only that chat's "
                                                  "users or an admin may decide it")
        _check_answers(approval, decision, answers)
        offered = approval.get("decisions")
        if offered is not None and decision.value not in offered:
            # What codex does with a decision it did not offer is undefined: refused here, nothing reaches it.
            raise RelayError(ErrorKind.INVALID_REQUEST, f"codex does not offer `{decision.value}` for approval "
                                                        f"{approval_id}; it offers: {', '.join(offered)}")
        state = DECISION_STATE[decision]
        if not await self.store.decide_approval(approval_id, state, decision.value, decided_by):
            current = await self.store.approval(approval_id)
            raise RelayError(ErrorKind.CONFLICT, f"approval {approval_id} was already {current and current['state']}"
                                         f" by {current and current['decided_by']}")
        session = self.hub.online(approval["node_id"])
        delivered = session is not None and session.send(
            wire.ApprovalDecision(approval_id=approval_id, decision=decision, answers=answers))
        log(logger, logging.INFO, "approval_decided", approval_id=approval_id, decision=decision.value,
            decided_by=decided_by, node_id=approval["node_id"], task_id=approval.get("task_id"), delivered=delivered)
        await self.publish(wire.ApprovalResolved(approval_id=approval_id, state=state.value, decision=decision.value,
                                                 decided_by=decided_by))
        return {"approval_id": approval_id, "state": state.value, "decision": decision.value,
                "decided_by": decided_by, "delivered": delivered}

    # ---- background sweeps ------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        last_flush = time.time()
        sweeps = 0
        while True:
            await asyncio.sleep(self.config.sweep_interval)
            sweeps += 1
            try:
                if self.config.retention_days and sweeps % PRUNE_EVERY == 0:
                    await self._prune()
                await self._reap_silent_nodes()
                for task_id, (node_id, result) in list(self.unstored.items()):
                    await self.accept_result(node_id, task_id, result)
                await self._expire_overdue_tasks()
                # Live nodes show their session's last_seen; the DB copy only matters after a crash,
                # and with 10,000 nodes each flush is a 10,000-row write.
                if time.time() - last_flush > LAST_SEEN_FLUSH and self.hub.sessions:
                    await self.store.touch_nodes({s.node_id: s.last_seen for s in self.hub.sessions.values()})
                    last_flush = time.time()
            except RelayError:
                continue  # the DB is locked; the next sweep retries
            except Exception:
                logger.exception("sweep failed", extra={"kv": {"op": "sweep_failed"}})

    async def _prune(self) -> None:
        tasks, approvals = await self.store.prune(time.time() - self.config.retention_days * 86400, PRUNE_BATCH)
        if tasks or approvals:
            self.hub.counters["pruned_tasks"] += tasks
            self.hub.counters["pruned_approvals"] += approvals
            log(logger, logging.INFO, "pruned", tasks=tasks, approvals=approvals,
                retention_days=self.config.retention_days)

    async def _reap_silent_nodes(self) -> None:
        cutoff = time.time() - self.config.offline_timeout
        for session in [s for s in self.hub.sessions.values() if s.last_seen < cutoff]:
            log(logger, logging.WARNING, "node_silent", node_id=session.node_id, last_seen=round(session.last_seen, 3))
            # The sweep never waits on a peer: the close runs on its own, bounded by close_timeout.
            self.tasks.spawn(session.sender.close(CLOSE_SILENT, b"no heartbeat within the offline timeout"),
                             f"close-silent-{session.node_id}")
            await self.session_closed(session)

    async def _expire_overdue_tasks(self) -> None:
        cutoff = time.time() - self.config.result_grace
        for task in await self.store.open_tasks():
            if task["deadline"] < cutoff:
                await self.accept_result(None, task["task_id"], wire.failed_task(RelayError(
                    ErrorKind.TIMEOUT, "no result arrived before the task's deadline plus the grace period")))


def _check_answers(approval: dict[str, Any], decision: Decision, answers: dict[str, list[str]] | None) -> None:
    """A question is accepted with an answer to each of its questions, or declined; an approval takes no answers."""
    if approval.get("kind") != ApprovalKind.QUESTION:
        if answers is not None:
            raise RelayError(ErrorKind.INVALID_REQUEST, f"field `answers`: approval {approval['approval_id']} is a "
                                                        f"{approval.get('kind')} approval, not a question")
        return
    if decision in (Decision.DECLINE, Decision.CANCEL):
        return
    ids = {str(q.get("id")) for q in approval.get("questions") or [] if isinstance(q, dict)}
    if decision != Decision.ACCEPT or answers is None or set(answers) != ids or not all(answers.values()):
        raise RelayError(ErrorKind.INVALID_REQUEST, f"field `answers`: question {approval['approval_id']} takes "
                                                    f"decision accept with an answer to each of {sorted(ids)}, or "
                                                    "decline")
