"""What codex asks of the user mid-turn. An approval, or a question (item/tool/requestUserInput), goes to the manager
and waits for a decision (a question's: its answers), for its timer, or for codex to withdraw it
(serverRequest/resolved, or its turn ended); every other request is refused at once (refusals.py), and the refusal
is noted for the user.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.logfmt import log
from runtime.node.activity import file_changes
from runtime.node.appserver import RpcError
from runtime.node.config import NodeConfig
from runtime.node.link import ManagerLink
from runtime.node.refusals import NOT_FOUND, REFUSALS, UNAVAILABLE, refusal
from runtime.protocol import SESSION_PROTOCOL, ApprovalKind, Decision, new_id
from runtime.protocol import wire

if TYPE_CHECKING:
    from runtime.node.tasks import Turn

logger = logging.getLogger("codex_node")

APPROVAL_METHODS = {"item/commandExecution/requestApproval": ApprovalKind.COMMAND,
                    "item/fileChange/requestApproval": ApprovalKind.FILE_CHANGE,
                    "item/tool/requestUserInput": ApprovalKind.QUESTION}
Answer = tuple[str, dict[str, list[str]] | None]  # the decision, and a question's answers by question id


@dataclass
class Pending:
    """An approval codex waits on. `answer` gets a decision, or None once codex no longer waits (withdrawn)."""
    approval_id: str
    request_id: Any
    thread_id: str
    turn: Turn | None
    answer: asyncio.Future[Answer | None]
    why: str = ""  # why it was withdrawn


def offered(params: dict[str, Any]) -> list[Decision]:
    """The decisions codex offers for this request, in Decision's order. Its availableDecisions may also hold
    amendments (a rule persisted on the node), which are not offered in chat. A file-change approval carries no
    list: its response takes every Decision."""
    available = params.get("availableDecisions")
    if not isinstance(available, list):
        return list(Decision)
    names = {d if isinstance(d, str) else next(iter(d), "") for d in available if isinstance(d, str | dict)}
    return [d for d in Decision if d.value in names]


class Approvals:
    def __init__(self, config: NodeConfig, link: ManagerLink, turn_of: Callable[[str], Turn | None]) -> None:
        self.config = config
        self.link = link
        self.turn_of = turn_of  # the running turn on a thread, if any
        self.pending: dict[str, Pending] = {}

    async def on_request(self, method: str, params: dict[str, Any], request_id: Any) -> dict[str, Any] | None:
        """The answer codex gets; None when codex withdrew the request, so it gets none."""
        thread_id = str(params.get("threadId") or "")
        turn = self.turn_of(thread_id)
        kind = APPROVAL_METHODS.get(method)
        # A question needs a chat to ask in, and a manager that relays questions (protocol 4); else it is refused.
        if kind is None or kind == ApprovalKind.QUESTION and (
                turn is None or turn.chat_key is None or self.link.manager_protocol < SESSION_PROTOCOL):
            return self._refuse(method, params, turn)
        pending = Pending(new_id("appr"), request_id, thread_id, turn, asyncio.get_running_loop().create_future())
        self.pending[pending.approval_id] = pending  # before any await: codex may withdraw it at once
        try:
            await self.link.send(wire.ApprovalRequest(
                approval_id=pending.approval_id, kind=kind.value,
                task_id=turn.task_id if turn else None, trace_id=turn.trace_id if turn else None,
                chat_key=turn.chat_key if turn else None, thread_id=thread_id or None,
                command=params.get("command"), cwd=params.get("cwd"), reason=params.get("reason"),
                changes=self._changes(params, turn), questions=params.get("questions"),
                decisions=None if kind == ApprovalKind.QUESTION else offered(params)))
            try:
                answer = await asyncio.wait_for(pending.answer, self.config.approval_timeout)
            except TimeoutError:
                answer = (Decision.DECLINE.value, None)
                if turn is not None:
                    turn.approvals_expired += 1
                log(logger, logging.WARNING, "approval_expired", node_id=self.config.node_id,
                    approval_id=pending.approval_id, task_id=turn.task_id if turn else None)
                await self.link.send(wire.ApprovalExpired(approval_id=pending.approval_id))
        finally:
            self.pending.pop(pending.approval_id, None)
        if answer is None:
            await self.link.send(wire.ApprovalWithdrawn(approval_id=pending.approval_id, reason=pending.why))
            return None
        decision, answers = answer
        if kind == ApprovalKind.QUESTION:
            # Declined or expired: codex gets no answers, as its schema says an unanswered question reads.
            given = answers if decision == Decision.ACCEPT and answers else {}
            return {"answers": {qid: {"answers": list(texts)} for qid, texts in given.items()}}
        if decision == Decision.CANCEL and turn is not None:
            turn.stop_requested = True  # codex interrupts the turn: the user's own stop, not a failure
        return {"decision": decision}

    async def on_decision(self, msg: wire.ApprovalDecision) -> None:
        pending = self.pending.get(msg.approval_id)
        if pending is not None and not pending.answer.done():
            pending.answer.set_result((msg.decision.value, msg.answers))

    def on_resolved(self, params: dict[str, Any]) -> None:
        """serverRequest/resolved: codex no longer waits for that request. After our own answer it is only an
        echo; before one, the approval is withdrawn, and codex must get no late answer."""
        for pending in list(self.pending.values()):
            if pending.request_id == params.get("requestId") and pending.thread_id == params.get("threadId"):
                self._withdraw(pending, "Codex closed it itself")

    def turn_ended(self, turn: Turn, why: str) -> None:
        """Whatever is still pending for a turn that ended has nobody waiting on it any more."""
        for pending in [p for p in self.pending.values() if p.turn is turn]:
            self._withdraw(pending, why)

    def _withdraw(self, pending: Pending, why: str) -> None:
        if pending.answer.done():
            return  # answered already: codex's resolution is the echo of our answer
        pending.why = why
        pending.answer.set_result(None)
        log(logger, logging.INFO, "approval_withdrawn", node_id=self.config.node_id, approval_id=pending.approval_id,
            task_id=pending.turn.task_id if pending.turn else None, reason=why)

    @staticmethod
    def _changes(params: dict[str, Any], turn: Turn | None) -> list[dict[str, str]] | None:
        """A file change's files and diffs: codex sent them just before asking, as its fileChange item."""
        item = turn.steps.items.get(str(params.get("itemId"))) if turn is not None else None
        return file_changes(item, turn.steps.cwd) if item is not None and turn is not None else None

    def _refuse(self, method: str, params: dict[str, Any], turn: Turn | None) -> dict[str, Any]:
        """At once, in the shape codex's schema gives the response, and noted for the user with the answer."""
        refused = refusal(method)
        note = refused.note(params)
        if turn is not None:
            turn.notes.append(note)
        log(logger, logging.WARNING, "server_request_refused", node_id=self.config.node_id, method=method,
            task_id=turn.task_id if turn else None, trace_id=turn.trace_id if turn else None)
        if refused.reply is None:
            raise RpcError(UNAVAILABLE if method in REFUSALS else NOT_FOUND, note)
        return refused.reply
