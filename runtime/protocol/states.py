"""The states a task and an approval go through, the decisions a user can give, and a node's readiness."""
from __future__ import annotations

from enum import StrEnum
from typing import Final

from runtime.protocol.kinds import ErrorKind


class TaskState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the user stopped it: final, and not a failure


FINAL_STATES: Final = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED})


def final_state(ok: bool, error_kind: str | None) -> TaskState:
    """The final state a task's result puts it in: a stop by the user is its own state, not a failure."""
    if ok:
        return TaskState.DONE
    return TaskState.CANCELLED if error_kind == ErrorKind.CANCELLED else TaskState.FAILED


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # codex resolved it itself (its turn was stopped or ended): nothing was decided


class Decision(StrEnum):
    """Decisions a user can give; the values are what Codex's requestApproval reply takes."""

    ACCEPT = "accept"
    ACCEPT_FOR_SESSION = "acceptForSession"
    DECLINE = "decline"
    CANCEL = "cancel"


class ReadyState(StrEnum):
    """Whether a node can run turns now. A state that is not ready is also the ErrorKind its turns fail with."""

    READY = "ready"
    NOT_LOGGED_IN = "not_logged_in"            # codex has no account, and its provider requires OpenAI auth
    PROVIDER_UNREACHABLE = "provider_unreachable"  # the model provider's base URL does not answer
    UNKNOWN = "unknown"                        # not checked yet, or a node too old to say
