"""The HTTP control API, declared once: each route's path, method, body and reply as msgspec Structs.

From this table come the manager's validation and routing, the bot's paths, and /openapi.json with request
and response schemas. Replies travel in the control envelope (runtime.protocol.envelope).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from runtime.protocol.kinds import ERROR_KINDS
from runtime.protocol.states import ApprovalState, Decision, TaskAction
from runtime.protocol.wire import (ApprovalPolicy, Failure, PendingApproval, Readiness, RpcOutcome, SandboxMode,
                                   TaskOutcome, ThreadSettings)


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
    TASKS_STOP = "/api/tasks/stop"
    USERS = "/api/users"
    FILES_GET = "/api/files/get"
    FILES_PUT = "/api/files/put"
    FILES_DIFF = "/api/files/diff"
    FILES_TRANSCRIBE = "/api/files/transcribe"


MAX_BODY_BYTES: Final = 1 << 20
MAX_TIMEOUT: Final = 7 * 86400.0  # a week: longer is a typo, and asyncio would overflow far beyond it

Id = Annotated[str, Meta(min_length=1, max_length=256)]
Text = Annotated[str, Meta(min_length=1)]
Timeout = Annotated[float, Meta(gt=0, le=MAX_TIMEOUT, description="seconds; must be positive")]
PageLimit = Annotated[int, Meta(ge=1, le=100_000)]
UserId = Annotated[int, Meta(ge=1, le=2**53, description="a Telegram user id")]
# A chat's /verbose: what its progress message shows. 0 the agent's text, 1 also the commands, files and tool calls,
# 2 also their output, diffs and arguments.
Verbose = Annotated[int, Meta(ge=0, le=2, description="0 the agent's text, 1 + commands, files and tool calls, "
                                                       "2 + their output and details")]
DEFAULT_VERBOSE: Final = 1
# A chat's /result: `send` posts the final answer as a new message (Telegram notifies), `replace` edits the
# progress message into it.
ResultMode = Literal["send", "replace"]
DEFAULT_RESULT_MODE: Final = "send"


class Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Base of request bodies (and of GET query strings, converted from text)."""


class Reply(msgspec.Struct, kw_only=True, omit_defaults=False):
    """Base of business replies: `ok` is true on success (failures are envelope.BusinessFailure)."""
    ok: bool = True


# ---- bodies ----------------------------------------------------------------------------------------

class NoBody(Body):
    pass


class ServersQuery(Body):
    online: bool | None = None
    limit: PageLimit | None = None
    after: str = ""


class NodeRef(Body):
    node_id: Id


class DispatchBody(Body):
    node_id: Id
    prompt: Text
    timeout: Timeout = 300.0
    task_id: Id | None = None
    thread_id: Id | None = None
    model: Id | None = None
    effort: Id | None = None


class DispatchTextBody(Body):
    """`action` review or compact runs codex's own turn on the chat's thread (`text` is what the user typed, kept
    with the task). `steer`: while a turn runs on the thread, true adds the text to it (turn/steer), false queues
    it to run next; absent follows the chat's setting (`queue`, default steer)."""
    chat_key: Id
    text: Text
    node_id: Id | None = None
    timeout: Timeout = 300.0
    task_id: Id | None = None
    action: TaskAction = TaskAction.TURN
    steer: bool | None = None
    # Uploads on the node (FILES_PUT's `path`) that codex gets as `localImage` input with the text.
    images: Annotated[list[Annotated[str, Meta(min_length=1, max_length=4096)]], Meta(max_length=10)] | None = None


class AppserverBody(Body):
    node_id: Id
    method: Id
    params: dict[str, Any] | UnsetType = UNSET
    timeout: Timeout = 30.0


class ConfigValueWriteBody(Body):
    node_id: Id
    key_path: Id
    value: Any
    merge_strategy: Literal["replace", "upsert"] = "replace"
    timeout: Timeout = 30.0


class ChatFilesBody(Body):
    """A file operation in the directory of a chat's thread on its node (the chat's node unless `node_id`)."""
    chat_key: Id
    node_id: Id | None = None
    timeout: Timeout = 30.0


class FileGetBody(Body):
    """One chunk of a file (FILE_CHUNK_BYTES from `offset`); the reply's `size` says how many more to ask for."""
    chat_key: Id
    path: Annotated[str, Meta(min_length=1, max_length=4096)]
    offset: Annotated[int, Meta(ge=0)] = 0
    node_id: Id | None = None
    timeout: Timeout = 30.0


class FilePutBody(Body):
    """A file, or one chunk of it: chunks of one `upload_id` come in order (`offset`), the last one `final`."""
    chat_key: Id
    name: Annotated[str, Meta(min_length=1, max_length=1024)]
    data: Annotated[str, Meta(description="the file's bytes (or this chunk's), base64; at most MAX_FILE_BYTES "
                                          "once decoded")]
    upload_id: Annotated[str, Meta(pattern="^[A-Za-z0-9_-]{0,64}$")] = ""
    offset: Annotated[int, Meta(ge=0)] = 0
    final: bool = True
    node_id: Id | None = None
    timeout: Timeout = 30.0


class ApprovalsQuery(Body):
    state: ApprovalState | None = None


class DecideBody(Body):
    """A chat front end passes where the decision was made and whether its user is an admin: an approval
    belongs to the chat it was posted in, and only that chat or an admin may decide it. A call without
    `chat_key` comes from the control token's holder, who may decide any."""
    approval_id: Id
    decision: Decision
    decided_by: Annotated[str, Meta(max_length=256)] = "api"
    chat_key: Id | None = None
    admin: bool = False
    # A question (kind `question`) is answered with `accept` and an answer for each of its questions, by id.
    answers: dict[str, list[Annotated[str, Meta(max_length=4000)]]] | None = None


class TokenBody(Body):
    node_id: Id | None = None
    note: Annotated[str, Meta(max_length=1000)] | None = None


class TokenRef(Body):
    token_id: Id


class ChatRef(Body):
    chat_key: Id


class ChatSelectBody(Body):
    """Absent leaves a field as it is. `thread_id` binds a thread on the chat's node (null: the next message starts
    a new one) with the settings it works with; settings absent beside a thread_id are the node's defaults. `queue`
    true makes a message sent while a turn runs wait and run next; false (the default) adds it to the running turn."""
    chat_key: Id
    node_id: Id | UnsetType = UNSET
    model: Id | None | UnsetType = UNSET
    effort: Id | None | UnsetType = UNSET  # a reasoning effort model/list offers; null: the model's default
    thread_id: Id | None | UnsetType = UNSET
    cwd: Annotated[str, Meta(min_length=1, max_length=4096)] | None | UnsetType = UNSET
    sandbox: SandboxMode | None | UnsetType = UNSET
    approval_policy: ApprovalPolicy | None | UnsetType = UNSET
    queue: bool | UnsetType = UNSET
    verbose: Verbose | UnsetType = UNSET
    result_mode: ResultMode | UnsetType = UNSET


class TasksQuery(Body):
    task_id: Id | None = None


class StopBody(Body):
    """Stop one task (`task_id`) or every running turn of a chat (`chat_key` alone). Like a decision, a chat front
    end passes the chat it acts from and whether its user is an admin: only that chat's users or an admin may
    stop a chat's turn. A call without `chat_key` is the control token's holder, who may stop any."""
    task_id: Id | None = None
    chat_key: Id | None = None
    stopped_by: Annotated[str, Meta(max_length=256)] = "api"
    admin: bool = False


class UserSetBody(Body):
    user_id: UserId
    role: Literal["user", "admin"] | None = None


# ---- replies ---------------------------------------------------------------------------------------

class NodeInfo(msgspec.Struct, kw_only=True):
    node_id: str
    token_id: str | None = None
    version: str | None = None
    first_seen: float
    last_seen: float
    online: bool
    stored_online: bool | None = None
    # Whether the node can run turns, as it last reported (protocol 3); null while it is offline.
    readiness: Readiness | None = None


class ServersReply(Reply):
    servers: list[NodeInfo]
    online: list[str]
    next_after: str | None


class StatusReply(NodeInfo, kw_only=True):
    ok: bool = True
    open_tasks: int
    # While the node is online: its default working directory and the roots a thread may work in.
    cwd: str | None = None
    allowed_roots: list[str] = msgspec.field(default_factory=list)


class TaskReply(TaskOutcome, kw_only=True):
    task_id: str
    duplicate: bool | None = None


class RpcReply(RpcOutcome, kw_only=True):
    pass


class ApprovalInfo(PendingApproval, kw_only=True):
    state: str
    decision: str | None = None
    decided_by: str | None = None
    created_at: float
    decided_at: float | None = None


class ApprovalsReply(Reply):
    approvals: list[ApprovalInfo]


class DecideReply(Reply):
    approval_id: str
    state: str
    decision: str
    decided_by: str
    delivered: bool


class TokenInfo(msgspec.Struct, kw_only=True):
    token_id: str
    node_id: str | None = None
    note: str | None = None
    created_at: float
    revoked_at: float | None = None


class TokenCreated(TokenInfo, kw_only=True):
    ok: bool = True
    token: str  # the plaintext, shown only in this reply


class TokensReply(Reply):
    tokens: list[TokenInfo]


class RevokeReply(Reply):
    token_id: str
    closed_sessions: list[str]


class Binding(ThreadSettings, kw_only=True):
    """A chat's thread on one node, and the settings it was started with."""
    thread_id: str


class ChatReply(Reply):
    chat_key: str
    node_id: str | None
    model: str | None
    effort: str | None
    threads: dict[str, str]  # node_id -> the chat's thread there
    bindings: dict[str, Binding]  # the same, with each thread's settings
    queue: bool = False
    verbose: int = DEFAULT_VERBOSE
    result_mode: ResultMode = DEFAULT_RESULT_MODE


class TaskRow(msgspec.Struct, kw_only=True):
    task_id: str
    trace_id: str
    node_id: str
    chat_key: str | None = None
    prompt: str
    thread_id: str | None = None
    model: str | None = None
    state: str
    created_at: float
    updated_at: float
    deadline: float
    result: TaskOutcome | None = None
    error_kind: str | None = None


class OpenTask(msgspec.Struct, kw_only=True):
    task_id: str
    trace_id: str
    node_id: str
    chat_key: str | None = None
    state: str
    deadline: float


class TasksReply(Reply):
    """With ?task_id: that task. Without: the open tasks and the count per state."""
    task: TaskRow | UnsetType = UNSET
    open: list[OpenTask] | UnsetType = UNSET
    counts: dict[str, int] | UnsetType = UNSET


class StopReply(Reply):
    """The tasks whose nodes were asked to stop them; each still ends with its one result (state `cancelled`)."""
    stopping: list[str]


class FileReply(Reply):
    name: str = ""
    path: str = ""
    data: str = ""
    size: int = 0
    empty: bool = False
    text: str = ""
    mtime_ns: int = 0


class UserInfo(msgspec.Struct):
    user_id: int
    role: str


class UsersReply(Reply):
    users: list[UserInfo]


# ---- envelope --------------------------------------------------------------------------------------

class BusinessFailure(Failure, kw_only=True):
    ok: bool = False
    task_id: str | None = None


class ControlFailure(Failure, kw_only=True):
    """Outer ok=false: the call itself was malformed, unauthorised or too large (HTTP 4xx)."""
    ok: bool = False


# ---- the route table -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    method: Literal["GET", "POST"]
    path: Api
    summary: str
    body: type[Body]
    reply: type[msgspec.Struct]
    # Builds a large reply without awaiting: the manager pauses its collector meanwhile (collector.py).
    bulk: bool = False


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", Api.SERVERS, "Nodes known to the manager, with online state and last-seen; ?online=true|false "
          "filters on the stored state, ?limit=N&after=<node_id> pages by node_id", ServersQuery, ServersReply,
          bulk=True),
    Route("POST", Api.STATUS, "One node's state", NodeRef, StatusReply),
    Route("POST", Api.DISPATCH, "Run one prompt on a node and wait for its result", DispatchBody, TaskReply),
    Route("POST", Api.DISPATCH_TEXT, "A chat's message as a Codex turn on its thread (started on first use)",
          DispatchTextBody, TaskReply),
    Route("POST", Api.APPSERVER, "Relay one app-server JSON-RPC method to a node", AppserverBody, RpcReply),
    Route("POST", Api.CONFIG_VALUE_WRITE, "Write one Codex config value on a node", ConfigValueWriteBody, RpcReply),
    Route("GET", Api.APPROVALS, "Approvals, optionally filtered by ?state=pending", ApprovalsQuery, ApprovalsReply),
    Route("POST", Api.APPROVALS_DECIDE, "Decide a pending approval, once", DecideBody, DecideReply),
    Route("POST", Api.TOKENS, "Generate a node token (its plaintext is shown only in this answer)", TokenBody,
          TokenCreated),
    Route("GET", Api.TOKENS, "Node tokens, without their secrets", NoBody, TokensReply),
    Route("POST", Api.TOKENS_REVOKE, "Revoke a token and close live sessions that use it", TokenRef, RevokeReply),
    Route("GET", Api.CHAT, "A chat's selected node, model, effort and threads, and how its turns are shown "
          "(?chat_key=)", ChatRef, ChatReply),
    Route("POST", Api.CHAT_SELECT, "Select a chat's node, model, effort or thread and its settings (thread_id null "
          "starts a new one), or set how its turns are shown (verbose, result_mode)", ChatSelectBody, ChatReply),
    Route("GET", Api.TASKS, "Tasks not yet final, or one task with ?task_id=", TasksQuery, TasksReply),
    Route("POST", Api.TASKS_STOP, "Stop a running turn (task_id) or a chat's running turns (chat_key): codex is "
          "interrupted and each task ends cancelled", StopBody, StopReply),
    Route("GET", Api.USERS, "Telegram users allowed to use the bot", NoBody, UsersReply),
    Route("POST", Api.USERS, "Allow a Telegram user (role user or admin), or remove one (role null)", UserSetBody,
          UsersReply),
    Route("POST", Api.FILES_GET, "A file from the chat's thread's working directory, base64 (refused outside it, for "
          "a directory, or over the node's file_max_bytes)", FileGetBody, FileReply),
    Route("POST", Api.FILES_PUT, "Save a file (base64) under the uploads folder of the chat's thread's working "
          "directory, with a sanitized name, atomically", FilePutBody, FileReply),
    Route("POST", Api.FILES_DIFF, "git's working-tree diff of the chat's thread's directory, as a patch (base64); "
          "`empty` when there are no changes", ChatFilesBody, FileReply),
    Route("POST", Api.FILES_TRANSCRIBE, "A voice note (base64) as text, by the speech-to-text endpoint of the chat's "
          "node's model provider (the node's transcribe_model); nothing is saved", FilePutBody, FileReply),
)


def openapi() -> dict[str, Any]:
    """OpenAPI 3.1 (its schemas are JSON Schema 2020-12, what msgspec emits)."""
    types: list[Any] = [BusinessFailure, ControlFailure]
    for r in ROUTES:
        types += [r.body, r.reply]
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    ref = dict(zip(types, refs, strict=True))
    failures = {str(info.http_status): {"description": ", ".join(k.value for k, i in ERROR_KINDS.items()
                                                                  if i.http_status == info.http_status),
                                        "content": _json(ref[ControlFailure])}
                for info in ERROR_KINDS.values() if info.http_status != 200}
    paths: dict[str, Any] = {}
    for r in ROUTES:
        envelope = {"type": "object", "required": ["ok", "result"], "properties": {
            "ok": {"const": True}, "result": {"anyOf": [ref[r.reply], ref[BusinessFailure]]}}}
        op: dict[str, Any] = {"summary": r.summary, "operationId": f"{r.method.lower()}{r.path.value.replace('/', '_')}",
                              "security": [{"bearer": []}],
                              "responses": {"200": {"description": "the control envelope: result.ok says whether "
                                                    "the business call succeeded", "content": _json(envelope)},
                                            **failures}}
        body = components[r.body.__name__]
        if r.method == "GET":
            op["parameters"] = [{"name": name, "in": "query", "required": name in body.get("required", []),
                                 "schema": _query_schema(schema)} for name, schema in body["properties"].items()]
        else:
            op["requestBody"] = {"required": True, "content": _json(ref[r.body])}
        paths.setdefault(r.path.value, {})[r.method.lower()] = op
    paths[Api.EVENTS.value] = {"get": {"summary": "Event stream (WebSocket upgrade); its messages are "
                                       "runtime.protocol.wire's events", "security": [{"bearer": []}],
                                       "responses": {"101": {"description": "switching to WebSocket"},
                                                     "400": failures["400"], "401": failures["401"]}}}
    return {"openapi": "3.1.0", "info": {"title": "Codex Relay manager control API", "version": "2"},
            "components": {"schemas": components,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "paths": paths}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A query value is text: null (absent) is not something a query string can say."""
    options = schema.get("anyOf")
    if options is None:
        return schema
    rest = [o for o in options if o.get("type") != "null"]
    return rest[0] if len(rest) == 1 else {"anyOf": rest}
