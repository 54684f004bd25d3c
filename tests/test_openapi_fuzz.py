"""Schemathesis against a real manager's own /openapi.json: no server error, and no reply that breaks the schema.

Examples per operation are bounded, so the run costs seconds; a stack with no nodes answers every relay at
once (node_offline). The CLI is used rather than the pytest plugin, whose fixture loader predates pytest 9.
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.stack import paths
from harness.stack.stack import Stack
from runtime.protocol import Api

EXAMPLES_PER_OPERATION = 30
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"
# The token reaches schemathesis through its config file's environment substitution, never argv.
CONFIG = '[headers]\nAuthorization = "Bearer ${RELAY_CONTROL_TOKEN}"\n'


@pytest.fixture(scope="module")
async def manager(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    s = Stack(Path(tmp_path_factory.mktemp("openapi")) / "stack")
    try:
        await s.start()
        yield s
    finally:
        await s.close()


async def test_control_api_conforms(manager: Stack, tmp_path: Path) -> None:
    """every operation, fuzzed from its own schema: no 5xx, every reply as its schema says"""
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    proc = await asyncio.create_subprocess_exec(
        str(paths.REPO_ROOT / ".venv" / "bin" / "schemathesis"), "--config-file", str(tmp_path / "schemathesis.toml"),
        "run", manager.manager_url + Api.OPENAPI.value, "--checks", CHECKS, "--max-examples",
        str(EXAMPLES_PER_OPERATION), "--seed", "1", "--workers", "1", "--no-color",
        cwd=tmp_path, env={**os.environ, "RELAY_CONTROL_TOKEN": manager.control_token},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    # The fuzzer really got past the bearer check: tokens it minted are there.
    assert (await manager.call(Api.TOKENS, {}, method="GET"))["tokens"], "no authorised call reached the manager"
