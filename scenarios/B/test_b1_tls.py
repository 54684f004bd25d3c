"""S-03: the manager serves HTTPS/WSS; a node and the bot verify it by CA file or pinned certificate, and a wrong
certificate is refused with a message that names the cause, never answered by falling back to plain text."""
from __future__ import annotations

import hashlib
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme

from harness.stack import paths
from harness.stack.procs import Proc, reap_all
from runtime import tls
from runtime.bot.manager_client import ManagerClient
from runtime.protocol import Api, RelayError, new_id

CONTROL = new_id("ctl")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.terminate()
    reap_all()


def _pem(tmp: Path, name: str, blob: trustme.Blob) -> str:
    blob.write_to_path(str(tmp / name))
    return str(tmp / name)


async def _node(procs: list[Proc], tmp: Path, name: str, url: str, token: str, **tls: str) -> Proc:
    argv = [sys.executable, "-m", "runtime.node.main", "--node-id", name, "--manager-url", url, "--cwd", str(tmp),
            "--codex-bin", str(paths.codex_bin()), "--codex-home", str(tmp / f"home-{name}"),
            "--state-dir", str(tmp / f"state-{name}"), "--backoff-max", "1"]
    for key, value in tls.items():
        argv += [f"--{key.replace('_', '-')}", value]
    (tmp / f"home-{name}").mkdir()
    proc = Proc(name, argv, tmp / f"{name}.log", env={"CODEX_RELAY_NODE_TOKEN": token}).start()
    procs.append(proc)
    return proc


@pytest.mark.case("S-03")
async def test_manager_tls_and_node_verification(tmp_path: Path, procs: list[Proc]) -> None:
    """a node trusts the manager by CA or by pinned SHA-256; the wrong CA or pin is refused, named, no fallback"""
    ca, other_ca = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_pem = _pem(tmp_path, "cert.pem", cert.cert_chain_pems[0])
    key_pem = _pem(tmp_path, "key.pem", cert.private_key_pem)
    ca_pem = _pem(tmp_path, "ca.pem", ca.cert_pem)
    other_pem = _pem(tmp_path, "other.pem", other_ca.cert_pem)
    manager = Proc("manager", [sys.executable, "-m", "runtime.manager.main", "--port", "0",
                               "--db", str(tmp_path / "m.sqlite3"), "--tls-cert", cert_pem, "--tls-key", key_pem],
                   tmp_path / "manager.log", env={"CODEX_RELAY_MANAGER_CONTROL_TOKEN": CONTROL}).start()
    procs.append(manager)
    port = await manager.wait_port("manager_ready")
    assert "tls=True" in manager.log_lines("manager_ready")[0]

    trusting = ssl.create_default_context(cafile=ca_pem)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {CONTROL}"}) as http:
        async with http.post(f"https://127.0.0.1:{port}{Api.TOKENS.value}", json={}, ssl=trusting) as resp:
            token = (await resp.json())["result"]["token"]
        with pytest.raises(aiohttp.ClientError):  # plain HTTP on the TLS port gets nothing
            async with http.get(f"http://127.0.0.1:{port}{Api.HEALTHZ.value}") as resp:
                await resp.read()

    wss = f"wss://127.0.0.1:{port}{Api.NODE_WS.value}"
    pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())).hexdigest()
    by_ca = await _node(procs, tmp_path, "by-ca", wss, token, tls_ca=ca_pem)
    by_pin = await _node(procs, tmp_path, "by-pin", wss, token, tls_fingerprint=":".join(
        pin[i:i + 2] for i in range(0, 64, 2)).upper())
    wrong_ca = await _node(procs, tmp_path, "wrong-ca", wss, token, tls_ca=other_pem)
    wrong_pin = await _node(procs, tmp_path, "wrong-pin", wss, token, tls_fingerprint="00" * 32)
    await by_ca.wait_log("registered", timeout=30)
    await by_pin.wait_log("registered", timeout=30)
    refused = await wrong_ca.wait_log("connect_failed", timeout=30)
    assert "TLS: the manager's certificate is not trusted" in refused and "certificate verify failed" in refused, refused
    refused = await wrong_pin.wait_log("connect_failed", timeout=30)
    assert f"SHA-256 {pin}" in refused and "is not the pinned one" in refused, refused
    assert not wrong_ca.log_lines("registered") and not wrong_pin.log_lines("registered")

    # The bot's client to the manager checks the same way.
    url = f"https://127.0.0.1:{port}"
    for trust, problem in ((ca_pem, None), (other_pem, "TLS: the manager's certificate is not trusted")):
        client = ManagerClient(url, CONTROL, 10, tls.client_ssl(url, trust, ""))
        try:
            if problem is None:
                assert "users" in await client.get(Api.USERS, new_id("tr"))
            else:
                with pytest.raises(RelayError, match=problem):
                    await client.get(Api.USERS, new_id("tr"))
        finally:
            await client.close()

    # A TLS setting with a plain ws:// URL stops the node at once: there is no plain-text fallback.
    plain = await _node(procs, tmp_path, "plain", wss.replace("wss://", "ws://"), token, tls_ca=ca_pem)
    line = await plain.wait_log("startup_failed", timeout=20)
    assert "plain text" in line and "wss://" in line, line
