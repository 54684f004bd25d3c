"""How the node names a failed turn's error kind from what codex says, in the shapes codex 0.171.0 sends: its schema
makes `codexErrorInfo` a string for plain variants and an object keyed by the variant for those with details."""
from __future__ import annotations

from typing import Any

import pytest

from runtime.node.tasks import classify
from runtime.protocol import ErrorKind


def failed(message: str, info: Any) -> dict[str, Any]:
    return {"status": "failed", "error": {"message": message, "codexErrorInfo": info, "additionalDetails": None}}


@pytest.mark.parametrize(("turn", "kind"), [
    # as recorded in codex-transcripts/drop_default.jsonl: an object, and a message that does not say "stream"
    (failed("Reconnecting... 5/5", {"responseStreamDisconnected": {"httpStatusCode": None}}),
     ErrorKind.UPSTREAM_DISCONNECT),
    # a provider never reached; one that answered 502 (U-02: tests/test_codex_errors.py has the rest)
    (failed("error sending request for url (http://127.0.0.1:9/v1/responses)",
            {"httpConnectionFailed": {"httpStatusCode": None}}), ErrorKind.PROVIDER_UNREACHABLE),
    (failed("unexpected status 502", {"responseStreamConnectionFailed": {"httpStatusCode": 502}}),
     ErrorKind.UPSTREAM_ERROR),
    # as recorded in codex-transcripts/drop_r0.jsonl: the final error is "other", its message names the drop
    (failed("stream disconnected before completion: error decoding response body", "other"),
     ErrorKind.UPSTREAM_DISCONNECT),
    (failed("mock upstream internal error", "internalServerError"), ErrorKind.UPSTREAM_ERROR),
    (failed("too many failed attempts", {"responseTooManyFailedAttempts": {"httpStatusCode": 500}}),
     ErrorKind.UPSTREAM_ERROR),
    (failed("something inside codex", None), ErrorKind.APPSERVER_ERROR),
    ({"status": "interrupted", "error": None}, ErrorKind.APPSERVER_ERROR),
])
def test_kind_of_a_failed_turn(turn: dict[str, Any], kind: ErrorKind) -> None:
    assert classify(turn, []).kind == kind


def test_the_error_notification_counts_when_the_turn_has_none() -> None:
    notice = failed("Reconnecting... 5/5", {"responseStreamDisconnected": {"httpStatusCode": None}})
    assert classify({"status": "failed", "error": None}, [notice]).kind == ErrorKind.UPSTREAM_DISCONNECT
