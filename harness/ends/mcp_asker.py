"""A user's MCP server that asks the user something: codex runs it (stdio, JSON-RPC lines) when a node's
CODEX_HOME configures it (Stack.add_node(mcp_asker=True)).

Reading any of its resources makes it send `elicitation/create` to codex, which codex forwards to its client as
`mcpServer/elicitation/request`; the resource's text then says what came back. The mock upstream's
`[[mock:elicit]]` makes the model read one. It only simulates a third-party tool server the model uses; codex
itself is the real one.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Final

NAME: Final = "relay_asker"
URI: Final = "relay://question"
QUESTION: Final = "Which environment should I deploy to?"
ELICIT_ID: Final = "relay-elicit"


def _send(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", **msg}) + "\n")
    sys.stdout.flush()


def _answer(method: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The result of a request from codex; None when it waits for codex's answer to an elicitation."""
    if method == "initialize":
        return {"protocolVersion": params.get("protocolVersion") or "2025-06-18",
                "capabilities": {"tools": {}, "resources": {}}, "serverInfo": {"name": NAME, "version": "1"}}
    if method == "tools/list":
        return {"tools": []}
    if method == "resources/templates/list":
        return {"resourceTemplates": []}
    if method == "resources/list":
        return {"resources": [{"uri": URI, "name": "question", "mimeType": "text/plain"}]}
    if method == "resources/read":
        _send({"id": ELICIT_ID, "method": "elicitation/create", "params": {
            "message": QUESTION, "requestedSchema": {"type": "object", "properties": {"target": {"type": "string"}},
                                                     "required": ["target"]}}})
        return None
    return {}


def main() -> None:
    waiting: list[Any] = []  # resources/read calls waiting for the user's answer, in order
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        method = msg.get("method")
        if method is None and msg.get("id") == ELICIT_ID and waiting:
            said = json.dumps(msg.get("result") if "result" in msg else {"error": msg.get("error")}, sort_keys=True)
            _send({"id": waiting.pop(0), "result": {"contents": [{"uri": URI, "text": f"the user answered: {said}"}]}})
        elif method is not None and "id" in msg:
            result = _answer(str(method), msg.get("params") or {})
            if result is None:
                waiting.append(msg["id"])
            else:
                _send({"id": msg["id"], "result": result})


if __name__ == "__main__":
    main()
