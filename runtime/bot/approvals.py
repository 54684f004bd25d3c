"""Approval prompts: post them where they belong, decide them once, and show the outcome on every copy.

The `/approve` command and the buttons both go through `decide`, so they cannot behave differently. A question
codex asks (kind `question`) is posted the same way; its answers (option buttons, or a typed message) are
collected here until every question has one, then sent once, as its decision.
"""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from telegram import InlineKeyboardMarkup

from runtime.bot import render
from runtime.bot.access import Access
from runtime.bot.context import Reply, Req, chat_id_of
from runtime.bot.delivery import Delivery
from runtime.bot.manager_client import ManagerClient
from runtime.bot.permissions import Role
from runtime.logfmt import log
from runtime.protocol import Api, ApprovalKind, ApprovalState, Decision, ErrorKind, RelayError

logger = logging.getLogger("codex_bot.approvals")

KEEP = 500  # approvals remembered for editing; older resolved ones are forgotten


@dataclass
class Posted:
    approval: dict[str, Any]
    text: str = ""
    messages: list[tuple[int, int]] = field(default_factory=list)  # (chat_id, message_id)
    resolved: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    answers: dict[str, list[str]] = field(default_factory=dict)  # a question's answers so far, by question id

    @property
    def question(self) -> bool:
        return self.approval.get("kind") == ApprovalKind.QUESTION

    def render(self, closed: bool = False) -> tuple[str, InlineKeyboardMarkup | None]:
        if self.question:
            return render.question(self.approval, self.answers, closed)
        return render.approval(self.approval)

    def unanswered(self) -> list[tuple[int, dict[str, Any]]]:
        """A question's questions still without an answer, with their index."""
        return [(i, q) for i, q in enumerate(self.approval.get("questions") or [])
                if isinstance(q, dict) and str(q.get("id")) not in self.answers]


class Approvals:
    def __init__(self, manager: ManagerClient, delivery: Delivery, access: Access) -> None:
        self.manager = manager
        self.delivery = delivery
        self.access = access
        self._posted: OrderedDict[str, Posted] = OrderedDict()

    async def on_requested(self, approval: dict[str, Any], trace_id: str) -> None:
        """Post one prompt per target chat; a repeat of the same approval_id posts nothing."""
        aid = str(approval.get("approval_id") or "")
        if not aid or aid in self._posted:
            return
        entry = self._posted[aid] = Posted(approval)  # registered before any await, so a resolve can find it
        self._forget_old()
        async with entry.lock:
            chat = chat_id_of(approval.get("chat_key"))
            targets = [chat] if chat is not None else sorted(await self.access.admin_ids(trace_id))
            entry.text, markup = entry.render()
            document = render.approval_document(approval)  # a diff too long for the prompt: a file above it
            for target in targets:
                if document is not None:
                    await self.delivery.document(target, *document, caption=f"The diff codex asks to apply "
                                                 f"(approval {aid})", trace_id=approval.get("trace_id"))
                sent = await self.delivery.send(target, entry.text, markup, trace_id=approval.get("trace_id"))
                if sent is not None:
                    entry.messages.append((target, sent.message_id))
            log(logger, logging.INFO, "approval_posted", approval_id=aid, node_id=approval.get("node_id"),
                task_id=approval.get("task_id"), trace_id=approval.get("trace_id"),
                chats=",".join(str(c) for c, _ in entry.messages) or "none")

    async def on_resolved(self, approval_id: str, state: str, decided_by: str | None, reason: str | None = None) -> None:
        """Edit every copy to show the outcome and who decided, without buttons. Done once."""
        entry = self._posted.get(approval_id)
        if entry is None:
            return
        async with entry.lock:
            if entry.resolved:
                return
            entry.resolved = True
            shown = entry.render(closed=True)[0] if entry.question else entry.text
            text = render.approval_outcome(shown, state, decided_by, reason, question=entry.question)
            for chat_id, message_id in entry.messages:
                await self.delivery.edit(chat_id, message_id, text, None, trace_id=entry.approval.get("trace_id"))
        log(logger, logging.INFO, "approval_shown_resolved", approval_id=approval_id, state=state,
            decided_by=decided_by)

    async def decide(self, req: Req, approval_id: str, decision: Decision,
                     answers: dict[str, list[str]] | None = None) -> str:
        """Decide via the manager; a second decision is refused politely (the manager answers conflict)."""
        try:
            admin = await self.access.role(req.user_id, req.trace_id) == Role.ADMIN
            body: dict[str, Any] = {"approval_id": approval_id, "decision": decision.value, "decided_by": req.user_label,
                                    "chat_key": req.chat_key, "admin": admin}
            if answers is not None:
                body["answers"] = answers
            result = await self.manager.post(Api.APPROVALS_DECIDE, req.trace_id, body)
        except RelayError as err:
            log(logger, logging.INFO, "approval_decide_refused", approval_id=approval_id, chat_id=req.chat_id,
                user_id=req.user_id, trace_id=req.trace_id, error_kind=err.kind)
            if err.kind == ErrorKind.INVALID_REQUEST:  # a decision codex did not offer: nothing was sent to it
                raise Reply(render.not_offered(err.error)) from None
            if err.kind != ErrorKind.CONFLICT:
                raise
            await self.resync(req.trace_id, only=approval_id)
            raise Reply(render.already_decided(approval_id, err.error)) from None
        log(logger, logging.INFO, "approval_decided", approval_id=approval_id, decision=decision.value,
            chat_id=req.chat_id, user_id=req.user_id, trace_id=req.trace_id, delivered=result.get("delivered"))
        await self.on_resolved(approval_id, str(result.get("state")), str(result.get("decided_by")))
        if answers is not None:
            return "Answered: Codex has your answer."
        verb = "Approved" if result.get("state") == ApprovalState.APPROVED else "Declined"
        scope = " for the session" if decision == Decision.ACCEPT_FOR_SESSION else ""
        return f"{verb}{scope}: {approval_id}."

    async def answer(self, req: Req, approval_id: str, index: int, text: str) -> str:
        """One answer to one of a question's questions (a tapped option, or typed text). Once every question has
        one, the answers go to codex, once; until then the prompt shows what was answered."""
        entry = self._posted.get(approval_id)
        if entry is None or not entry.question or entry.resolved:
            raise Reply("This question is no longer open: Codex has its answer, or stopped waiting for one.")
        async with entry.lock:
            asked = entry.approval.get("questions") or []
            if entry.resolved or not 0 <= index < len(asked):
                raise Reply("This question is no longer open: Codex has its answer, or stopped waiting for one.")
            entry.answers[str(asked[index].get("id"))] = [text]
            left = len(entry.unanswered())
            if left:
                shown, markup = entry.render()
                for chat_id, message_id in entry.messages:
                    await self.delivery.edit(chat_id, message_id, shown, markup, trace_id=req.trace_id)
        log(logger, logging.INFO, "question_answered", approval_id=approval_id, index=index, left=left,
            chat_id=req.chat_id, trace_id=req.trace_id)
        if left:
            return f"Noted: {text}. {left} more question{'s' if left > 1 else ''} to answer."
        return await self.decide(req, approval_id, Decision.ACCEPT, dict(entry.answers))

    def options(self, approval_id: str, index: int) -> list[str]:
        """The option labels of one of an open question's questions; [] when it is not open here."""
        entry = self._posted.get(approval_id)
        asked = (entry.approval.get("questions") or []) if entry is not None and entry.question else []
        if not 0 <= index < len(asked):
            return []
        return [str(o.get("label")) for o in asked[index].get("options") or []]

    def typed_answer_for(self, chat_id: int) -> tuple[str, int] | None:
        """The open question in this chat that a typed message answers (the oldest that takes text): its
        approval_id and the index of its first unanswered question that takes text."""
        for aid, entry in self._posted.items():
            if entry.question and not entry.resolved and any(c == chat_id for c, _ in entry.messages):
                for index, q in entry.unanswered():
                    if render.takes_text(q):
                        return aid, index
        return None

    async def resync(self, trace_id: str, only: str | None = None) -> None:
        """After the event stream (re)connects: post what was missed, and close prompts decided meanwhile."""
        try:
            if only is None:
                pending = (await self.manager.get(Api.APPROVALS, trace_id, state=ApprovalState.PENDING.value))
                for a in pending.get("approvals") or []:
                    await self.on_requested(a, trace_id)
                pending_ids = {a.get("approval_id") for a in pending.get("approvals") or []}
                stale = {aid for aid, p in self._posted.items() if not p.resolved and aid not in pending_ids}
            else:
                stale = {only}
            if stale:  # only then is the whole history worth reading
                for a in (await self.manager.get(Api.APPROVALS, trace_id)).get("approvals") or []:
                    if a.get("approval_id") in stale and a.get("state") != ApprovalState.PENDING:
                        await self.on_resolved(a["approval_id"], str(a.get("state")), a.get("decided_by"))
        except RelayError as err:
            log(logger, logging.WARNING, "approvals_resync_failed", trace_id=trace_id, error_kind=err.kind)

    def _forget_old(self) -> None:
        if len(self._posted) <= KEEP:
            return
        for aid in [a for a, p in self._posted.items() if p.resolved][: len(self._posted) - KEEP]:
            del self._posted[aid]
        while len(self._posted) > 2 * KEEP:  # pending ones too, past a hard bound
            self._posted.popitem(last=False)
