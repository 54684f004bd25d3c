"""Server requests the node cannot put before a user yet: codex gets its own "no" at once, in the shape its
schema gives that request's response, and the user reads what was refused with the turn's answer.

A JSON-RPC error is kept for the two requests whose response has no way to say no (a ChatGPT token refresh and
an attestation both need a token), and for methods this codex version did not have.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

Params = dict[str, Any]
NOT_FOUND: Final = -32601  # JSON-RPC "method not found": a request this node does not know
UNAVAILABLE: Final = -32000  # JSON-RPC server error: known, and there is no way to answer it here


@dataclass(frozen=True)
class Refusal:
    reply: dict[str, Any] | None  # the JSON-RPC result that says no; None answers with a JSON-RPC error
    note: Callable[[Params], str]  # what the user reads


def _short(value: Any, limit: int = 120) -> str:
    text = " ".join(str(value or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _questions(p: Params) -> str:
    asked = [q for q in p.get("questions") or [] if isinstance(q, dict)]
    listed = "; ".join(_short(q.get("question") or q.get("header"), 80) for q in asked) or "no text"
    return (f"Codex asked you {len(asked)} question(s) ({listed}). This relay cannot ask them in the chat yet, "
            "so Codex got no answers and went on without them; say what you want in your next message.")


def _elicitation(p: Params) -> str:
    return (f"The MCP server {p.get('serverName') or '?'} asked for input (\"{_short(p.get('message'))}\"). This relay "
            "cannot show MCP forms yet, so it was declined; answer in your next message if the server needs it.")


def _tool_call(p: Params) -> str:
    return (f"Codex called the client-side tool {p.get('tool') or '?'}. This relay provides no client tools, so the "
            "call failed and Codex was told so.")


def _permissions(p: Params) -> str:
    reason = f" ({_short(p.get('reason'))})" if p.get("reason") else ""
    return (f"Codex asked for extra permissions{reason}. This relay cannot grant them from the chat yet, so none "
            "were granted; change the thread's sandbox if the task needs them.")


def _legacy(kind: str) -> Callable[[Params], str]:
    return lambda p: (f"Codex asked in the old protocol to approve a {kind}; this relay answers only the current "
                      "approval requests, so it was denied.")


def _auth(p: Params) -> str:
    return ("Codex asked for fresh ChatGPT login tokens. The node does not manage ChatGPT logins, so the refresh "
            "failed: log in again on the node (`codex login`).")


def _attestation(p: Params) -> str:
    return "Codex asked the client for an attestation token. The node has none to give, so the request failed."


DENIED: Final = {"denied": {"rejection": "the relay answers only the current approval requests"}}
REFUSALS: Final[dict[str, Refusal]] = {
    "item/tool/requestUserInput": Refusal({"answers": {}}, _questions),
    "mcpServer/elicitation/request": Refusal({"action": "decline", "content": None}, _elicitation),
    "item/tool/call": Refusal({"success": False, "contentItems": [
        {"type": "inputText", "text": "This client provides no tools; the call was not run."}]}, _tool_call),
    "item/permissions/requestApproval": Refusal({"permissions": {}, "scope": "turn"}, _permissions),
    "applyPatchApproval": Refusal({"decision": DENIED}, _legacy("file change")),
    "execCommandApproval": Refusal({"decision": DENIED}, _legacy("command")),
    "account/chatgptAuthTokens/refresh": Refusal(None, _auth),
    "attestation/generate": Refusal(None, _attestation),
}


def refusal(method: str) -> Refusal:
    """The refusal for `method`; a method this codex version did not have gets a JSON-RPC error naming it."""
    return REFUSALS.get(method) or Refusal(None, lambda p: f"Codex sent a request this node does not know ({method}); "
                                                           "it was refused.")
