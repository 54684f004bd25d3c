"""Error kinds, one table: each kind's retriable flag, the text a user reads (the problem and the fix), its HTTP status."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final


class ErrorKind(StrEnum):
    QUEUE_FULL = "queue_full"
    TIMEOUT = "timeout"
    UPSTREAM_DISCONNECT = "upstream_disconnect"
    APPROVAL_TIMEOUT = "approval_timeout"
    UPSTREAM_ERROR = "upstream_error"
    # The node is not ready for turns (runtime.protocol.wire.Readiness): refused at once, before codex is asked.
    NOT_LOGGED_IN = "not_logged_in"
    PROVIDER_UNREACHABLE = "provider_unreachable"
    UPSTREAM_UNAUTHORIZED = "upstream_unauthorized"
    APPSERVER_ERROR = "appserver_error"
    APPSERVER_CRASH = "appserver_crash"
    # Not a failure: the user stopped the turn (/stop, the Stop button, Cancel on an approval). A task that
    # ends this way is in its own final state, `cancelled`, and is counted apart from failures.
    CANCELLED = "cancelled"
    NODE_OFFLINE = "node_offline"
    PATH_NOT_ALLOWED = "path_not_allowed"
    # Seen only by the bot (and other control clients): the manager itself cannot be reached.
    MANAGER_UNAVAILABLE = "manager_unavailable"
    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    TOO_LARGE = "too_large"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    CONFLICT = "conflict"
    STORAGE_ERROR = "storage_error"
    INTERNAL = "internal"


@dataclass(frozen=True)
class KindInfo:
    kind: ErrorKind
    retriable: bool
    text: str  # what a user reads: the problem and what to do about it
    http_status: int = 200  # for control-plane failures (outer ok=false) only


def _table(*infos: KindInfo) -> dict[ErrorKind, KindInfo]:
    table = {i.kind: i for i in infos}
    missing = set(ErrorKind) - set(table)
    assert not missing, f"error kinds without a table entry: {sorted(missing)}"
    return table


K = ErrorKind
ERROR_KINDS: Final[Mapping[ErrorKind, KindInfo]] = _table(
    KindInfo(K.QUEUE_FULL, False, "The node's task queue is full. Wait for running tasks to finish, "
             "or raise max_pending in the node's config."),
    KindInfo(K.TIMEOUT, True, "No answer within the time limit. Retry, or give the call a longer timeout."),
    KindInfo(K.UPSTREAM_DISCONNECT, True, "The model upstream dropped the stream before the reply was "
             "complete. Retry; if it keeps happening, check the node's network to the model provider."),
    KindInfo(K.APPROVAL_TIMEOUT, False, "Nobody decided the approval in time, so it was declined. "
             "Send the request again and answer the approval prompt sooner."),
    KindInfo(K.UPSTREAM_ERROR, True, "The model upstream answered with an error. Retry later; "
             "if it persists, check the provider's status and the node's model config."),
    KindInfo(K.NOT_LOGGED_IN, False, "Codex on that node is not logged in, so it cannot run turns. On that machine, "
             "as the user the node runs as and with the node's CODEX_HOME, run `codex login` (or pipe an API key to "
             "`codex login --with-api-key`), then send it again."),
    KindInfo(K.PROVIDER_UNREACHABLE, True, "The node cannot reach its model provider. Check that machine's network, "
             "its proxy settings (HTTPS_PROXY) and the provider's base_url in its Codex config, then retry."),
    KindInfo(K.UPSTREAM_UNAUTHORIZED, False, "The model provider refused the node's credentials. On that machine, run "
             "`codex login` again (as the user the node runs as, with its CODEX_HOME) or fix the provider's API key, "
             "then send it again."),
    KindInfo(K.APPSERVER_ERROR, False, "Codex app-server rejected the call. Check the method name and params."),
    KindInfo(K.APPSERVER_CRASH, True, "The Codex app-server on the node exited; the node restarted it. Retry."),
    KindInfo(K.CANCELLED, False, "You stopped this turn. Send a new message to go on; the thread keeps what "
             "was done so far."),
    KindInfo(K.PATH_NOT_ALLOWED, False, "That working directory cannot be used on this node: it must be an "
             "existing directory inside the node's allowed roots. Pick one inside them, or ask the node's operator "
             "to add a root (allowed_roots)."),
    KindInfo(K.NODE_OFFLINE, True, "The node is offline. Wait for it to reconnect, or pick another node with /node."),
    KindInfo(K.MANAGER_UNAVAILABLE, True, "manager unavailable: the Codex Relay manager cannot be reached right "
             "now. The bot keeps retrying by itself; send your request again in a minute."),
    KindInfo(K.INVALID_REQUEST, False, "The request is malformed. Fix the named field and send it again.", 400),
    KindInfo(K.UNAUTHORIZED, False, "Missing or wrong credentials. Use a valid token.", 401),
    KindInfo(K.TOO_LARGE, False, "The request body is larger than the manager accepts. Send less, "
             "or split it.", 413),
    KindInfo(K.BUSY, True, "The manager is at its limit of connections still being set up. Retry in a few "
             "seconds.", 503),
    KindInfo(K.FORBIDDEN, False, "You may not do that here. The refusal says who may."),
    KindInfo(K.RATE_LIMITED, True, "Too many failed attempts with bad credentials from this address. Wait the "
             "seconds given, then retry with the right token.", 429),
    KindInfo(K.NOT_FOUND, False, "No such object. Check the id."),
    KindInfo(K.CONFLICT, False, "That was already decided or done; nothing changed."),
    KindInfo(K.STORAGE_ERROR, True, "The manager's database is busy or not writable; nothing was changed. "
             "Retry shortly; if it persists, check the manager's disk and DB locks."),
    KindInfo(K.INTERNAL, True, "An internal error occurred; it was logged. Retry, and report it if it repeats."),
)


def parse_kind(kind: str | None) -> ErrorKind:
    """A kind read off the wire; one this version does not know is treated as internal rather than trusted."""
    try:
        return ErrorKind(kind or "")
    except ValueError:
        return ErrorKind.INTERNAL


def kind_of(kind: str | None) -> KindInfo:
    return ERROR_KINDS[parse_kind(kind)]


def user_error_line(kind: str | None, error: str | None = None) -> str:
    """The line a user reads for a failure: `kind=<kind>, retriable=<yes|no>: <text>`."""
    k = kind_of(kind)
    detail = f" ({error})" if error and error != k.text else ""
    return f"kind={k.kind.value}, retriable={'yes' if k.retriable else 'no'}: {k.text}{detail}"


class RelayError(Exception):
    """A classified failure: raised inside a process, turned into a business or control result."""

    def __init__(self, kind: ErrorKind, error: str | None = None) -> None:
        self.kind = kind
        self.error = error or ERROR_KINDS[kind].text
        super().__init__(f"{kind.value}: {self.error}")

    @property
    def retriable(self) -> bool:
        return ERROR_KINDS[self.kind].retriable

    @property
    def http_status(self) -> int:
        return ERROR_KINDS[self.kind].http_status

    def fields(self) -> dict[str, Any]:
        return {"error": self.error, "error_kind": self.kind.value, "retriable": self.retriable}
