"""codex's error and retry notices, as codex 0.171.0 sends them (seen against the mock), become the right error
kind with codex's reason, and the retry notice a user reads."""
from __future__ import annotations

from typing import Any

import pytest

from runtime.node.tasks import classify, retry_notice
from runtime.protocol import ERROR_KINDS, ErrorKind


def failed_turn(message: str, info: Any) -> dict[str, Any]:
    return {"status": "failed", "error": {"message": message, "codexErrorInfo": info, "additionalDetails": None}}


@pytest.mark.parametrize(("message", "info", "kind"), [
    ("unexpected status 401 Unauthorized: Incorrect API key provided., url: http://127.0.0.1:1/v1/responses",
     {"httpConnectionFailed": {"httpStatusCode": 401}}, ErrorKind.UPSTREAM_UNAUTHORIZED),
    ("exceeded retry limit, last status: 429 Too Many Requests",
     {"responseTooManyFailedAttempts": {"httpStatusCode": 429}}, ErrorKind.UPSTREAM_ERROR),
    ("unexpected status 503 Service Unavailable: The server is overloaded or not ready yet.",
     {"httpConnectionFailed": {"httpStatusCode": 503}}, ErrorKind.UPSTREAM_ERROR),
    ("We're currently experiencing high demand, which may cause temporary errors.", "internalServerError",
     ErrorKind.UPSTREAM_ERROR),
    ("stream disconnected before completion: Transport error: network error: error decoding response body", "other",
     ErrorKind.UPSTREAM_DISCONNECT),
    ("Connection failed: error sending request", {"httpConnectionFailed": {"httpStatusCode": None}},
     ErrorKind.PROVIDER_UNREACHABLE),
])
def test_a_failed_turn_gets_its_kind_and_codexs_reason(message: str, info: Any, kind: ErrorKind) -> None:
    err = classify(failed_turn(message, info), [])
    assert err.kind == kind and err.error == message
    assert err.retriable == ERROR_KINDS[kind].retriable


def test_not_retriable_when_the_credentials_are_refused() -> None:
    assert not ERROR_KINDS[ErrorKind.UPSTREAM_UNAUTHORIZED].retriable
    not_logged_in = ERROR_KINDS[ErrorKind.NOT_LOGGED_IN]
    assert not not_logged_in.retriable and "`codex login`" in not_logged_in.text
    assert ERROR_KINDS[ErrorKind.PROVIDER_UNREACHABLE].retriable


@pytest.mark.parametrize(("message", "details", "shown"), [
    ("Reconnecting... 2/5", "unexpected status 503 Service Unavailable: overloaded, url: http://127.0.0.1:1/v1/responses",
     "reconnecting 2/5: unexpected status 503 Service Unavailable: overloaded"),
    ("Reconnecting... waiting for network", "Connection failed: error sending request",
     "reconnecting, waiting for network: Connection failed: error sending request"),
    ("Reconnecting... 1/5", None, "reconnecting 1/5"),
])
def test_a_retry_notice_reads_as_codex_said_it(message: str, details: str | None, shown: str) -> None:
    assert retry_notice(message, details) == shown
