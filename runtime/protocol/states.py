"""The states a task and an approval go through, and the decisions a user can give."""
from __future__ import annotations

from enum import StrEnum
from typing import Final


class TaskState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


FINAL_STATES: Final = frozenset({TaskState.DONE, TaskState.FAILED})


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"
    EXPIRED = "expired"


class Decision(StrEnum):
    """Decisions a user can give; the values are what Codex's requestApproval reply takes."""

    ACCEPT = "accept"
    ACCEPT_FOR_SESSION = "acceptForSession"
    DECLINE = "decline"
    CANCEL = "cancel"
