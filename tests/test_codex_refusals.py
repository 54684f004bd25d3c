"""The node's answers to codex's server requests, against the schema the pinned codex generates: every request
codex can send is either relayed (an approval) or refused at once, in the shape of that request's response."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from harness.stack import paths
from runtime.node.approvals import APPROVAL_METHODS
from runtime.node.refusals import REFUSALS, refusal

# What codex would send with each request, enough for the note the user reads.
PARAMS: dict[str, dict[str, Any]] = {
    "item/tool/requestUserInput": {"questions": [{"id": "env", "header": "Env", "question": "Which environment?"}]},
    "mcpServer/elicitation/request": {"serverName": "deploys", "message": "Which environment?"},
    "item/tool/call": {"tool": "open_browser"},
    "item/permissions/requestApproval": {"reason": "needs the network"},
}
NAMED = {"item/tool/requestUserInput": "Which environment?", "mcpServer/elicitation/request": "deploys",
         "item/tool/call": "open_browser", "item/permissions/requestApproval": "needs the network"}


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("codex-schema")
    subprocess.run([str(paths.codex_bin()), "app-server", "generate-json-schema", "--out", str(out)], check=True,
                   capture_output=True, timeout=60)
    return out


def _requests(schema: Path) -> dict[str, str]:
    """Each server->client method, and the name of its params' definition."""
    doc = json.loads((schema / "ServerRequest.json").read_text())
    return {o["properties"]["method"]["enum"][0]: o["properties"]["params"]["$ref"].rsplit("/", 1)[-1]
            for o in doc["oneOf"]}


def test_every_server_request_is_relayed_or_refused(schema: Path) -> None:
    assert set(_requests(schema)) == set(APPROVAL_METHODS) | set(REFUSALS)


@pytest.mark.parametrize("method", sorted(REFUSALS))
def test_a_refusal_is_that_requests_response(schema: Path, method: str) -> None:
    response = json.loads((schema / f"{_requests(schema)[method].removesuffix('Params')}Response.json").read_text())
    refused = REFUSALS[method]
    if refused.reply is None:
        # No response can say no: each requires a credential the node does not have, so codex gets an error.
        assert {"accessToken", "token"} & set(response.get("required", [])), response
    else:
        errors = [e.message for e in jsonschema_rs.validator_for(response).iter_errors(refused.reply)]
        assert not errors, errors
    note = refused.note(PARAMS.get(method, {}))
    assert note.endswith(".") and NAMED.get(method, "") in note, note


def test_an_unknown_request_is_refused_by_name() -> None:
    refused = refusal("item/brandNew/request")
    assert refused.reply is None and "item/brandNew/request" in refused.note({})
