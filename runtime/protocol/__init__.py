"""The single source of truth for Codex Relay's wire protocol.

Every process (manager, node, bot, harness) imports message types, error kinds, the control API's routes and
the control-result envelope from here, so that no two places can drift apart:
- `kinds`: error kinds, with retriable flags and the text a user reads;
- `wire`: every node-socket message and event-stream event, as msgspec Structs;
- `api`: every control route, with its body and reply.
"""
from __future__ import annotations

import uuid
from typing import Any, Final

import msgspec

from runtime.protocol.api import (MAX_BODY_BYTES, ROUTES, Api, Body, BusinessFailure, ControlFailure, Reply, Route,
                                  openapi)
from runtime.protocol.states import (FINAL_STATES, ApprovalKind, ApprovalState, Decision, ReadyState, TaskAction, TaskState,
                                     final_state)
from runtime.protocol.kinds import ERROR_KINDS, ErrorKind, KindInfo, RelayError, kind_of, parse_kind, user_error_line
from runtime.protocol.wire import (MAX_FRAME_BYTES, MIN_NODE_PROTOCOL, NODE_AUTH_HEADER, PROTOCOL_VERSION,
                                   READINESS_PROTOCOL, SESSION_PROTOCOL, Event, Frame, Msg, bearer, bearer_token,
                                   decode_event, decode_manager_frame, decode_node_frame, encode_bytes, failed)

__all__ = ["ERROR_KINDS", "FINAL_STATES", "MAX_BODY_BYTES", "MAX_FRAME_BYTES", "MIN_NODE_PROTOCOL",
           "NODE_AUTH_HEADER", "PROTOCOL_VERSION", "READINESS_PROTOCOL", "ROUTES", "SESSION_PROTOCOL", "Api",
           "ApprovalKind", "ApprovalState", "Body", "BusinessFailure", "ControlFailure", "Decision", "ErrorKind",
           "Event", "Frame", "KindInfo", "Msg", "ReadyState", "RelayError", "Reply", "Route", "TaskAction",
           "TaskState", "bearer", "bearer_token", "business_fail", "control_fail", "decode", "decode_event",
           "decode_manager_frame", "decode_node_frame", "encode", "encode_bytes", "failed", "final_state", "kind_of",
           "message", "new_id", "openapi", "parse_kind", "user_error_line"]


# WebSocket close codes the manager uses (4000-4999 is the application range).
CLOSE_UNAUTHORIZED: Final = 4001
CLOSE_REPLACED: Final = 4002
CLOSE_REVOKED: Final = 4003
CLOSE_PROTOCOL: Final = 4400
CLOSE_SILENT: Final = 4408  # no heartbeat within the offline timeout
CLOSE_SHUTDOWN: Final = 1001


# ---- control-result envelope -------------------------------------------------------------
# Outer `ok` is the control plane: the call was well-formed, authorised and answered.
# `result.ok` is business success. A timed-out dispatch, an app-server error or a full queue
# are outer ok=true with result.ok=false. Only malformed, unauthorised or oversized calls are outer ok=false.

def business_fail(err: RelayError, **fields: Any) -> dict[str, Any]:
    return {"ok": True, "result": {"ok": False, **fields, **err.fields()}}


def control_fail(err: RelayError) -> dict[str, Any]:
    return {"ok": False, **err.fields()}


# ---- ids and untyped frames (scripted peers in the harness speak these on purpose) --------

def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def message(msg_type: Msg | Event, /, **fields: Any) -> dict[str, Any]:
    return {"type": msg_type.value, **fields}


def encode(msg: Any) -> str:
    return encode_bytes(msg).decode()


def decode(raw: str | bytes) -> dict[str, Any]:
    """Any frame as a plain dict with a string `type`; for peers that must see exactly what was sent."""
    try:
        msg = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise RelayError(ErrorKind.INVALID_REQUEST, f"frame is not JSON: {exc}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise RelayError(ErrorKind.INVALID_REQUEST, "frame must be a JSON object with a string `type`")
    return msg
