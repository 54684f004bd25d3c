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


class TaskAction(StrEnum):
    """What a task asks of codex on the chat's thread: a turn on the user's text, or one of codex's own turns."""

    TURN = "turn"          # turn/start with the text
    REVIEW = "review"      # review/start on the thread's uncommitted changes; the findings are the answer
    COMPACT = "compact"    # thread/compact/start: codex summarizes the thread's history to free its context


class ApprovalKind(StrEnum):
    """What an approval asks of the chat's user."""

    COMMAND = "command"          # item/commandExecution/requestApproval
    FILE_CHANGE = "file_change"  # item/fileChange/requestApproval
    QUESTION = "question"        # item/tool/requestUserInput: codex's questions, answered by option or free text


class ApprovalState(StrEnum):
    """An approval, or a question codex asks the user (kind `question`): both wait on the chat's user."""

    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"  # codex resolved it itself (its turn was stopped or ended): nothing was decided


class Decision(StrEnum):
    """Decisions a user can give; the values are what Codex's requestApproval reply takes. A question is answered
    with `accept` and the answers, or `decline` (codex gets no answers)."""

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
