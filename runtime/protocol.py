"""The single source of truth for Codex Relay's wire protocol.

Every process (manager, node, bot, harness) imports message types, error kinds and the
control-result envelope from here, so that no two places can drift apart.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final
from collections.abc import Mapping

import orjson

PROTOCOL_VERSION: Final = 1
# Frames above this are refused by both ends: a turn's text is small, a bigger frame is abuse.
MAX_FRAME_BYTES: Final = 1 << 20


class Msg(StrEnum):
    """Message types on the manager <-> node WebSocket (the `type` field)."""

    REGISTER = "register"
    REGISTER_OK = "register_ok"
    REGISTER_ERROR = "register_error"
    HEARTBEAT = "heartbeat"
    HEARTBEAT_ACK = "heartbeat_ack"
    TASK_ASSIGN = "task_assign"
    TASK_ACK = "task_ack"
    TASK_PROGRESS = "task_progress"
    TASK_RESULT = "task_result"
    TASK_CANCEL = "task_cancel"
    # After a (re)registration the manager lists the tasks it believes the node holds;
    # the node answers each with its result, its state, or "unknown".
    TASK_SYNC = "task_sync"
    TASK_STATE = "task_state"
    APPSERVER_REQUEST = "appserver_request"
    APPSERVER_RESPONSE = "appserver_response"
    APPROVAL_REQUEST = "approval_request"
    APPROVAL_DECISION = "approval_decision"
    APPROVAL_EXPIRED = "approval_expired"
    ERROR = "error"


class Event(StrEnum):
    """Event types pushed on the manager's control event stream (to the bot and others)."""

    HELLO = "hello"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_RESOLVED = "approval_resolved"
    TASK_PROGRESS = "task_progress"
    TASK_RESULT = "task_result"
    NODE_ONLINE = "node_online"
    NODE_OFFLINE = "node_offline"


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


# WebSocket close codes the manager uses (4000-4999 is the application range).
CLOSE_UNAUTHORIZED: Final = 4001
CLOSE_REPLACED: Final = 4002
CLOSE_REVOKED: Final = 4003
CLOSE_PROTOCOL: Final = 4400
CLOSE_SILENT: Final = 4408  # no heartbeat within the offline timeout
CLOSE_SHUTDOWN: Final = 1001


@dataclass(frozen=True)
class ErrorKind:
    kind: str
    retriable: bool
    text: str  # what a user reads: the problem and what to do about it
    http_status: int = 200  # for control-plane failures (outer ok=false) only


def _kinds(*kinds: ErrorKind) -> dict[str, ErrorKind]:
    return {k.kind: k for k in kinds}


ERROR_KINDS: Final[Mapping[str, ErrorKind]] = _kinds(
    ErrorKind("queue_full", False, "The node's task queue is full. Wait for running tasks to finish, "
              "or raise max_pending in the node's config."),
    ErrorKind("timeout", True, "No answer within the time limit. Retry, or give the call a longer timeout."),
    ErrorKind("upstream_disconnect", True, "The model upstream dropped the stream before the reply was "
              "complete. Retry; if it keeps happening, check the node's network to the model provider."),
    ErrorKind("approval_timeout", False, "Nobody decided the approval in time, so it was declined. "
              "Send the request again and answer the approval prompt sooner."),
    ErrorKind("upstream_error", True, "The model upstream answered with an error. Retry later; "
              "if it persists, check the provider's status and the node's model config."),
    ErrorKind("appserver_error", False, "Codex app-server rejected the call. Check the method name and params."),
    ErrorKind("appserver_crash", True, "The Codex app-server on the node exited; the node restarted it. Retry."),
    ErrorKind("node_offline", True, "The node is offline. Wait for it to reconnect, or pick another node with /node."),
    # Seen only by the bot (and other control clients): the manager itself cannot be reached.
    ErrorKind("manager_unavailable", True, "manager unavailable: the Codex Relay manager cannot be reached right now. "
              "The bot keeps retrying by itself; send your request again in a minute."),
    ErrorKind("invalid_request", False, "The request is malformed. Fix the named field and send it again.", 400),
    ErrorKind("unauthorized", False, "Missing or wrong credentials. Use a valid token.", 401),
    ErrorKind("not_found", False, "No such object. Check the id."),
    ErrorKind("conflict", False, "That was already decided or done; nothing changed."),
    ErrorKind("storage_error", True, "The manager's database is busy or not writable; nothing was changed. "
              "Retry shortly; if it persists, check the manager's disk and DB locks."),
    ErrorKind("internal", True, "An internal error occurred; it was logged. Retry, and report it if it repeats."),
)


def kind_of(kind: str) -> ErrorKind:
    """The table entry for `kind`; an unknown kind is treated as internal rather than trusted."""
    return ERROR_KINDS.get(kind, ERROR_KINDS["internal"])


def user_error_line(kind: str, error: str | None = None) -> str:
    """The line a user reads for a failure: `kind=<kind>, retriable=<yes|no>: <text>`."""
    k = kind_of(kind)
    detail = f" ({error})" if error and error != k.text else ""
    return f"kind={k.kind}, retriable={'yes' if k.retriable else 'no'}: {k.text}{detail}"


class RelayError(Exception):
    """A classified failure: raised inside a process, turned into a business or control result."""

    def __init__(self, kind: str, error: str | None = None) -> None:
        self.kind = kind_of(kind).kind
        self.error = error or kind_of(kind).text
        super().__init__(f"{self.kind}: {self.error}")

    @property
    def retriable(self) -> bool:
        return kind_of(self.kind).retriable

    def fields(self) -> dict[str, Any]:
        return {"error": self.error, "error_kind": self.kind, "retriable": self.retriable}


# ---- control-result envelope -------------------------------------------------------------
# Outer `ok` is the control plane: the call was well-formed, authorised and answered.
# `result.ok` is business success. A timed-out dispatch, an app-server error or a full queue
# are outer ok=true with result.ok=false. Only malformed or unauthorised calls are outer ok=false.

def business_ok(**fields: Any) -> dict[str, Any]:
    return {"ok": True, "result": {"ok": True, **fields}}


def business_fail(err: RelayError, **fields: Any) -> dict[str, Any]:
    return {"ok": True, "result": {"ok": False, **fields, **err.fields()}}


def control_fail(err: RelayError) -> dict[str, Any]:
    return {"ok": False, **err.fields()}


def result_fields(ok: bool, err: RelayError | None = None, **fields: Any) -> dict[str, Any]:
    """The inner result of a task or app-server call, as carried in WS messages and the DB."""
    return {"ok": ok, **fields, **(err.fields() if err else {})}


# ---- framing -------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def message(msg_type: Msg | Event, /, **fields: Any) -> dict[str, Any]:
    return {"type": str(msg_type), **fields}


def encode_bytes(msg: Any) -> bytes:
    """JSON for frames, stdio lines and control replies. orjson: the fleet-sized /api/servers reply
    (10,000 nodes, 1.6 MB) costs a tenth of what the standard json module spends on it."""
    return orjson.dumps(msg, default=str, option=orjson.OPT_NON_STR_KEYS)


def encode(msg: Mapping[str, Any]) -> str:
    return encode_bytes(msg).decode()


def loads(raw: str | bytes) -> Any:
    """Strict JSON: anything malformed raises ValueError, as the standard module does."""
    return orjson.loads(raw)


def decode(raw: str | bytes) -> dict[str, Any]:
    """Parse one frame; anything but a JSON object with a known `type` is invalid_request."""
    if len(raw) > MAX_FRAME_BYTES:
        raise RelayError("invalid_request", f"frame larger than {MAX_FRAME_BYTES} bytes")
    try:
        msg = loads(raw)
    except ValueError as exc:
        raise RelayError("invalid_request", f"frame is not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise RelayError("invalid_request", "frame must be a JSON object with a string `type`")
    return msg


def parse_msg_type(msg: Mapping[str, Any]) -> Msg:
    try:
        return Msg(msg["type"])
    except ValueError:
        raise RelayError("invalid_request", f"unknown message type {msg['type']!r}") from None


def require(msg: Mapping[str, Any], field: str) -> str:
    """A required string field of a message, or invalid_request naming it."""
    value = msg.get(field)
    if value is None or value == "":
        raise RelayError("invalid_request", f"missing field `{field}`")
    if not isinstance(value, str):
        raise RelayError("invalid_request", f"field `{field}` must be a string")
    return value


# ---- control API paths (shared by the manager, the bot and the harness) -------------------

class Api(StrEnum):
    HEALTHZ = "/healthz"
    METRICS = "/metrics"
    OPENAPI = "/openapi.json"
    NODE_WS = "/ws/node"
    EVENTS = "/api/events"
    SERVERS = "/api/servers"
    STATUS = "/api/status"
    DISPATCH = "/api/dispatch"
    DISPATCH_TEXT = "/api/dispatch_text"
    APPSERVER = "/api/appserver"
    APPROVALS = "/api/approvals"
    APPROVALS_DECIDE = "/api/approvals/decide"
    TOKENS = "/api/tokens"
    TOKENS_REVOKE = "/api/tokens/revoke"
    CONFIG_VALUE_WRITE = "/api/config_value_write"
    CHAT = "/api/chat"
    CHAT_SELECT = "/api/chat/select"
    TASKS = "/api/tasks"
    USERS = "/api/users"
