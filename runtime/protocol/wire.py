"""Every message on the node WebSocket and the event stream, declared once as a msgspec Struct.

The `type` field is the tag. From these declarations come the decoders (strict: a field missing or of the
wrong type is an error naming it), the dispatch tables of the manager and the node, and the JSON Schemas.
Unknown fields are ignored, so a newer peer can add one without breaking an older one.
"""
from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from runtime.protocol.kinds import ErrorKind, RelayError
from runtime.protocol.states import Decision, ReadyState, TaskAction

# 3 adds a node's readiness (in its register frame, and the `readiness` frame whenever it changes), and the node's
# token on its WebSocket upgrade request (NODE_AUTH_HEADER). 4 adds the chat's session: steering a running turn,
# task actions (review, compact), and codex's questions to the user (an approval of kind `question`).
PROTOCOL_VERSION: Final = 4
# The oldest node protocol this manager still serves: 1 differs only in the register frame's `protocol` default,
# 2 in sending no readiness (such a node's readiness is `unknown`) and its token in the register frame only.
MIN_NODE_PROTOCOL: Final = 1
# The first protocol whose nodes send `readiness` frames, and whose managers take them.
READINESS_PROTOCOL: Final = 3
# The first protocol whose nodes steer turns and run task actions, and whose managers relay codex's questions.
SESSION_PROTOCOL: Final = 4
# Frames above this are refused by both ends: a turn's text is small, a bigger frame is abuse.
MAX_FRAME_BYTES: Final = 1 << 20
# A node (protocol 3) sends `Bearer <node token>` here on its WebSocket upgrade request. A socket whose request
# carried a valid token may send frames up to MAX_FRAME_BYTES; any other may send only small ones until it has
# registered (the manager's preauth_frame_bytes), so a stranger's frame costs the manager a few KB at most.
NODE_AUTH_HEADER: Final = "Authorization"
# The most one file_request/file_response (and one /api/files/* body) carries of a file: base64 in JSON makes it a
# third larger, and the frame's other fields fit in the rest of MAX_FRAME_BYTES. Larger files go in chunks of
# FILE_CHUNK_BYTES; a diff and a voice note go in one frame, so they are bounded by MAX_FILE_BYTES.
MAX_FILE_BYTES: Final = (MAX_FRAME_BYTES - (64 << 10)) * 3 // 4
FILE_CHUNK_BYTES: Final = 512 << 10
# Telegram lets a bot download files of up to 20 MB: the bot's file_max_bytes may not be more.
TELEGRAM_DOWNLOAD_BYTES: Final = 20 << 20


def bearer(token: str) -> str:
    return f"Bearer {token}"


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None when there is none."""
    if header is None or not header.startswith("Bearer "):
        return None
    return header[len("Bearer "):].strip() or None

Id = Annotated[str, Meta(min_length=1, max_length=256)]


def now() -> float:
    return time.time()


class Msg(StrEnum):
    """Message types on the manager <-> node WebSocket (the `type` field, each Struct's tag)."""

    REGISTER = "register"
    REGISTER_OK = "register_ok"
    REGISTER_ERROR = "register_error"
    HEARTBEAT = "heartbeat"
    READINESS = "readiness"
    HEARTBEAT_ACK = "heartbeat_ack"
    TASK_ASSIGN = "task_assign"
    TASK_ACK = "task_ack"
    TASK_PROGRESS = "task_progress"
    TASK_RESULT = "task_result"
    TASK_CANCEL = "task_cancel"
    TASK_SYNC = "task_sync"
    TASK_STATE = "task_state"
    APPSERVER_REQUEST = "appserver_request"
    APPSERVER_RESPONSE = "appserver_response"
    APPROVAL_REQUEST = "approval_request"
    APPROVAL_DECISION = "approval_decision"
    APPROVAL_EXPIRED = "approval_expired"
    APPROVAL_WITHDRAWN = "approval_withdrawn"
    FILE_REQUEST = "file_request"
    FILE_RESPONSE = "file_response"
    ERROR = "error"


class Event(StrEnum):
    """Event types on the manager's control event stream (to the bot and others)."""

    HELLO = "hello"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_RESOLVED = "approval_resolved"
    TASK_PROGRESS = "task_progress"
    TASK_RESULT = "task_result"
    NODE_ONLINE = "node_online"
    NODE_OFFLINE = "node_offline"


class Frame(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    """Base of every WebSocket message; the subclass's tag is its `type`."""


# ---- results carried inside messages ---------------------------------------------------------------

class Failure(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A classified failure, as every result and reply carries it. `error_kind` is an ErrorKind value;
    one this version does not know is read as internal (runtime.protocol.kinds.parse_kind)."""
    error: str | None = None
    error_kind: str | None = None
    retriable: bool | None = None


class TokenUsage(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A turn's tokens, summed over its model requests (the `last` of codex's thread/tokenUsage/updated), and how
    full the thread's context is: the latest request's `context_tokens` of the model's `context_window`."""
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_output_tokens: int = 0
    total_tokens: int = 0
    context_tokens: int | None = None
    context_window: int | None = None


class TaskOutcome(Failure, kw_only=True):
    """A task's one final result: the answer's text and where it ran, or the failure."""
    ok: bool
    text: str | None = None
    thread_id: str | None = None
    turn_id: str | None = None
    duration_ms: float | None = None
    # What the node answered codex on the user's behalf during the turn (a request it cannot relay yet, and
    # refused), for the user to read with the answer.
    notes: list[str] | None = None
    usage: TokenUsage | None = None  # absent when codex reported none (the turn never reached the model)
    # The prompt joined the chat's running turn (turn/steer) instead of running on its own: that task's answer is
    # the answer to both, and this task ends done with no text of its own.
    steered_into: str | None = None


StepStatus = Literal["running", "done", "failed", "declined"]


class Activity(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One step of a running turn, from codex's item/started and item/completed: a command, a file change or a
    tool call. The bot shows `title` from /verbose 1 on, and `detail` (output, diff, arguments) at /verbose 2."""
    kind: Literal["command", "files", "tool"]
    title: str
    status: StepStatus = "running"
    detail: str = ""


class RpcOutcome(Failure, kw_only=True):
    """An app-server call's answer: codex's JSON-RPC result, or the failure."""
    ok: bool
    result: Any = None


class FileOutcome(Failure, kw_only=True):
    """A file operation's answer: the file (get, diff) or where an upload was saved (put), or the failure."""
    ok: bool
    name: str = ""  # get/diff: the document's file name; put: the saved file's name
    path: str = ""  # get: the file's real path; put: the saved file's real path on the node; diff: the directory
    data: str = ""  # get: the chunk at the request's offset; diff: the whole patch; base64
    size: int = 0  # bytes of the whole file (put: received so far, and as saved once final)
    mtime_ns: int = 0  # get: the file's modification time, so a reader of chunks sees a file that changed
    empty: bool = False  # diff: the working tree has no changes
    text: str = ""  # transcribe: what the voice note says


def failed(err: RelayError) -> dict[str, Any]:
    return {"ok": False, **err.fields()}


def failed_task(err: RelayError, **fields: Any) -> TaskOutcome:
    """A task's final result when it failed: the classified failure, and where it ran if that is known."""
    return TaskOutcome(ok=False, **fields, **err.fields())


class Readiness(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Whether a node can run turns, as its last check found: codex's login (`account/read`), whether its model
    provider answers, and codex's version. A state other than ready is the ErrorKind its turns fail with."""
    state: ReadyState = ReadyState.UNKNOWN
    codex_version: str = ""
    account: str | None = None  # codex's account type ("apiKey", "chatgpt"), None when it has none
    requires_openai_auth: bool = False
    provider: str = ""  # the model provider's id in codex's config
    provider_url: str = ""  # its base URL, which the node probes
    provider_reachable: bool | None = None
    problem: str | None = None  # what the check found wrong; the fix is the kind's text (kinds.py)
    checked_at: float = 0.0


# ---- node -> manager -------------------------------------------------------------------------------

class Register(Frame, tag=Msg.REGISTER.value, kw_only=True):
    node_id: Id
    token: str = ""
    version: str = ""
    protocol: int = 1
    readiness: Readiness | None = None  # protocol 3
    # `codex-relay-node doctor`: the manager checks the token and answers, and registers nothing.
    check: bool = False
    # Where the node's threads may work (real paths), so a chat can offer them; the node enforces them itself.
    cwd: str = ""
    allowed_roots: list[str] = msgspec.field(default_factory=list)


class ReadinessReport(Frame, tag=Msg.READINESS.value, kw_only=True):
    """The node's readiness changed since it registered (protocol 3)."""
    readiness: Readiness


class Heartbeat(Frame, tag=Msg.HEARTBEAT.value, kw_only=True):
    node_id: str = ""
    ts: float = 0.0
    codex_rss_mb: float = 0.0  # the codex child's memory now
    codex_recycles: int = 0  # times the node restarted its codex child on purpose (recycle bounds)


class TaskAck(Frame, tag=Msg.TASK_ACK.value, kw_only=True):
    task_id: Id
    state: str = "queued"


class TaskProgress(Frame, tag=Msg.TASK_PROGRESS.value, kw_only=True):
    """The turn so far: the agent's text, and its latest steps (older ones are counted in `earlier`)."""
    task_id: Id
    chat_key: str | None = None
    text: str = ""
    activity: list[Activity] = msgspec.field(default_factory=list)
    earlier: int = 0
    # codex's latest retry notice in this turn, e.g. "reconnecting 2/5: unexpected status 503 ..."
    notice: str | None = None
    # The task waits for the turn running on its thread to end, and runs right after it (the chat queues).
    queued: bool = False


class TaskResult(Frame, tag=Msg.TASK_RESULT.value, kw_only=True):
    task_id: Id
    result: TaskOutcome


class TaskStateReport(Frame, tag=Msg.TASK_STATE.value, kw_only=True):
    """A task's state as the node knows it; `unknown` after a restart lost it."""
    task_id: Id
    state: Literal["queued", "assigned", "running", "done", "failed", "cancelled", "unknown"]


class AppserverResponse(Frame, tag=Msg.APPSERVER_RESPONSE.value, kw_only=True):
    request_id: Id
    result: RpcOutcome


class FileResponse(Frame, tag=Msg.FILE_RESPONSE.value, kw_only=True):
    request_id: Id
    result: FileOutcome


class ApprovalFields(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What codex asks to be approved (or asks the user), and for which task and chat."""
    approval_id: Id
    kind: str  # an ApprovalKind: "command", "file_change", or "question" (item/tool/requestUserInput; protocol 4)
    task_id: str | None = None
    trace_id: str | None = None
    chat_key: str | None = None
    thread_id: str | None = None
    command: Any = None
    cwd: str | None = None
    reason: str | None = None
    # A file change's files: [{"path", "kind", "diff"}], as codex's fileChange item had them before it asked.
    changes: Any = None
    # The decisions codex offers (its availableDecisions, those a user can give); absent: any Decision.
    decisions: list[Decision] | None = None
    # kind `question`: codex's questions as its schema gives them (id, header, question, options, isOther, isSecret)
    questions: Any = None


class ApprovalRequest(ApprovalFields, Frame, tag=Msg.APPROVAL_REQUEST.value, kw_only=True):
    pass


class PendingApproval(ApprovalFields, kw_only=True):
    node_id: str


class ApprovalExpired(Frame, tag=Msg.APPROVAL_EXPIRED.value, kw_only=True):
    approval_id: Id


class ApprovalWithdrawn(Frame, tag=Msg.APPROVAL_WITHDRAWN.value, kw_only=True):
    """Codex resolved a pending approval itself (its turn was stopped or ended): the prompt closes now, and
    the node sends codex no late answer."""
    approval_id: Id
    reason: str = ""


# ---- manager -> node -------------------------------------------------------------------------------

class RegisterOk(Frame, tag=Msg.REGISTER_OK.value, kw_only=True):
    node_id: str
    session_id: str
    protocol: int = PROTOCOL_VERSION
    heartbeat_interval: float = 5.0
    offline_timeout: float = 15.0


class RegisterError(Failure, Frame, tag=Msg.REGISTER_ERROR.value, kw_only=True):
    pass


class HeartbeatAck(Frame, tag=Msg.HEARTBEAT_ACK.value, kw_only=True):
    ts: float = 0.0


# Codex's thread settings a chat may choose (`thread/start`'s `sandbox` and `approvalPolicy`).
SandboxMode = Literal["read-only", "workspace-write", "danger-full-access"]
ApprovalPolicy = Literal["untrusted", "on-request", "never"]
SANDBOX_MODES: Final[tuple[SandboxMode, ...]] = ("read-only", "workspace-write", "danger-full-access")
APPROVAL_POLICIES: Final[tuple[ApprovalPolicy, ...]] = ("untrusted", "on-request", "never")


class ThreadSettings(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Where and how a chat's thread works, as /thread start or fork chose it; None is the node's default.
    The node passes them again on `thread/resume`: codex restores a thread's cwd, but not its sandbox."""
    cwd: str | None = None
    sandbox: SandboxMode | None = None
    approval_policy: ApprovalPolicy | None = None


class TaskAssign(Frame, tag=Msg.TASK_ASSIGN.value, kw_only=True):
    task_id: Id
    prompt: str
    timeout: Annotated[float, Meta(gt=0)]
    trace_id: str = ""
    node_id: str = ""
    chat_key: str | None = None
    thread_id: str | None = None
    model: str | None = None
    effort: str | None = None  # a reasoning effort model/list offers for the model (turn/start's `effort`)
    settings: ThreadSettings | None = None
    # Protocol 4; a node of an earlier release ignores them (it queues, and the manager sends it no action).
    action: TaskAction = TaskAction.TURN
    steer: bool = False  # a turn running on the thread takes the prompt (turn/steer); else it runs after that turn
    # The chat's task sent to this node before this one, still open then: this one runs on that task's thread when
    # the manager knew none yet (the first turn of a chat is still starting its thread).
    follows: str | None = None
    # Images the user sent with the prompt: real paths of uploads on the node (file_request put), given to codex as
    # `localImage` input after the node checks each lies inside its allowed roots.
    images: list[str] | None = None


class TaskCancel(Frame, tag=Msg.TASK_CANCEL.value, kw_only=True):
    """`timeout`: the manager gave up waiting, the task fails as timeout. `user`: the user stopped it; the node
    interrupts the codex turn and the task ends cancelled. A node of the previous release ignores `reason`."""
    task_id: Id
    reason: Literal["timeout", "user"] = "timeout"


class TaskSync(Frame, tag=Msg.TASK_SYNC.value, kw_only=True):
    """After a (re)registration: the tasks the manager believes the node holds. Each is answered with
    its result, its state, or `unknown`."""
    task_ids: list[str]


class AppserverRequest(Frame, tag=Msg.APPSERVER_REQUEST.value, kw_only=True):
    request_id: Id
    method: Id
    timeout: Annotated[float, Meta(gt=0)]
    trace_id: str = ""
    # Absent when the caller sent none: some codex methods take no params at all.
    params: dict[str, Any] | UnsetType = UNSET


FileOp = Literal["get", "put", "diff", "transcribe"]


class FileRequest(Frame, tag=Msg.FILE_REQUEST.value, kw_only=True):
    """A file to or from the directory a chat's thread works in (`cwd`; None is the node's own). `get`: the file at
    `path` (relative to it) if it lies inside it; `put`: `data` saved under its uploads folder as a sanitized `name`,
    written to a temporary file and renamed; `diff`: git's working-tree diff there, as a patch; `transcribe`: `data`
    (a voice note) as text, by the speech-to-text endpoint of the node's model provider (nothing is saved)."""
    request_id: Id
    op: FileOp
    timeout: Annotated[float, Meta(gt=0)]
    trace_id: str = ""
    cwd: str | None = None
    path: str = ""
    name: str = ""
    data: str = ""  # put: base64, at most FILE_CHUNK_BYTES once decoded
    # A file larger than one chunk: get reads FILE_CHUNK_BYTES from `offset`; put appends `data` at `offset` to the
    # upload `upload_id`, and `final` saves it under its name.
    offset: Annotated[int, Meta(ge=0)] = 0
    upload_id: Annotated[str, Meta(pattern="^[A-Za-z0-9_-]{0,64}$")] = ""
    final: bool = True


class ApprovalDecision(Frame, tag=Msg.APPROVAL_DECISION.value, kw_only=True):
    approval_id: Id
    decision: Decision
    answers: dict[str, list[str]] | None = None  # a question's answers, by question id (decision accept)


class ErrorReply(Failure, Frame, tag=Msg.ERROR.value, kw_only=True):
    """Either side's answer to a frame it could not take; the session stays up."""


NodeFrame = (Register | Heartbeat | ReadinessReport | TaskAck | TaskProgress | TaskResult | TaskStateReport
             | AppserverResponse | FileResponse | ApprovalRequest | ApprovalExpired | ApprovalWithdrawn | ErrorReply)
ManagerFrame = (RegisterOk | RegisterError | HeartbeatAck | TaskAssign | TaskCancel | TaskSync | AppserverRequest
                | FileRequest | ApprovalDecision | ErrorReply)

# ---- the event stream: manager -> control clients (the bot) ---------------------------------------


class EventFrame(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    ts: float = msgspec.field(default_factory=now)
    # Events a client must not miss (results, approvals) are numbered and kept: a client that reconnects with
    # ?after=<seq>&manager=<manager_id> gets those it missed first. 0: live only (progress, node up/down).
    seq: int = 0


class Hello(EventFrame, tag=Event.HELLO.value, kw_only=True):
    online: list[str]
    manager_id: str = ""  # this manager's database: numbers from another one mean nothing here
    last_seq: int = 0  # the newest numbered event, where a new client starts
    replayed: int = 0  # how many missed events follow, before the live ones


class ApprovalRequested(EventFrame, tag=Event.APPROVAL_REQUESTED.value, kw_only=True):
    approval: PendingApproval


class ApprovalResolved(EventFrame, tag=Event.APPROVAL_RESOLVED.value, kw_only=True):
    approval_id: str
    state: str
    decision: str | None = None
    decided_by: str | None = None
    reason: str | None = None  # why codex withdrew it (state `withdrawn`)


class TaskProgressEvent(EventFrame, tag=Event.TASK_PROGRESS.value, kw_only=True):
    task_id: str
    node_id: str
    chat_key: str | None = None
    text: str = ""
    activity: list[Activity] = msgspec.field(default_factory=list)
    earlier: int = 0
    notice: str | None = None
    queued: bool = False


class TaskResultEvent(EventFrame, tag=Event.TASK_RESULT.value, kw_only=True):
    task_id: str
    node_id: str
    chat_key: str | None = None
    trace_id: str | None = None
    result: TaskOutcome


class NodeOnline(EventFrame, tag=Event.NODE_ONLINE.value, kw_only=True):
    node_id: str


class NodeOffline(EventFrame, tag=Event.NODE_OFFLINE.value, kw_only=True):
    node_id: str


AnyEvent = Hello | ApprovalRequested | ApprovalResolved | TaskProgressEvent | TaskResultEvent | NodeOnline | NodeOffline

# ---- codec -----------------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_node_frames = msgspec.json.Decoder(NodeFrame)
_manager_frames = msgspec.json.Decoder(ManagerFrame)
_events = msgspec.json.Decoder(AnyEvent)


def encode_bytes(msg: Any) -> bytes:
    """JSON for frames, stdio lines and control replies; Structs, dicts, enums and Raw alike."""
    return _encoder.encode(msg)


def field_error(exc: msgspec.ValidationError) -> str:
    """msgspec says "Expected `int` >= 1 - at `$.limit`"; name the field first, the way people read it."""
    problem, _, where = str(exc).rpartition(" - at ")
    if where == "`$.type`":
        return f"unknown message type ({problem})"
    if where.startswith("`$.") and problem:
        return f"field `{where[3:].rstrip('`')}`: {problem}"
    return str(exc)


def encode_frame(msg: Frame) -> bytes:
    """A frame to send; one over the frame limit is refused here, before the peer would drop the connection."""
    raw = _encoder.encode(msg)
    if len(raw) > MAX_FRAME_BYTES:
        raise RelayError(ErrorKind.TOO_LARGE, f"the {msg.__struct_config__.tag} frame would be {len(raw)} bytes, "
                         f"over the {MAX_FRAME_BYTES}-byte frame limit: send a shorter prompt or smaller params")
    return raw


def _decode(decoder: msgspec.json.Decoder[Any], raw: str | bytes) -> Any:
    if len(raw) > MAX_FRAME_BYTES:
        raise RelayError(ErrorKind.INVALID_REQUEST, f"frame larger than {MAX_FRAME_BYTES} bytes")
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise RelayError(ErrorKind.INVALID_REQUEST, f"bad frame: {field_error(exc)}") from None
    except msgspec.DecodeError as exc:
        raise RelayError(ErrorKind.INVALID_REQUEST, f"frame is not JSON: {exc}") from None


def decode_node_frame(raw: str | bytes) -> NodeFrame:
    """A frame a node sent; anything malformed is invalid_request naming the field."""
    frame: NodeFrame = _decode(_node_frames, raw)
    return frame


def decode_manager_frame(raw: str | bytes) -> ManagerFrame:
    frame: ManagerFrame = _decode(_manager_frames, raw)
    return frame


def decode_event(raw: str | bytes) -> AnyEvent:
    event: AnyEvent = _decode(_events, raw)
    return event


def schemas() -> dict[str, Any]:
    """The JSON Schema of every message and event, for docs and for conformance checks."""
    (frames, events), components = msgspec.json.schema_components(
        [NodeFrame | ManagerFrame, AnyEvent], ref_template="#/$defs/{name}")
    return {"$defs": components, "node_socket": frames, "event_stream": events}
