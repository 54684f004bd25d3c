"""S-08: the systemd kit in deploy/systemd passes `systemd-analyze verify`, carries the hardening it claims, and
the README's deployment section makes every file the units read. No stack: the units are checked as files."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.stack import paths

UNITS = paths.REPO_ROOT / "deploy" / "systemd"
README = paths.REPO_ROOT / "README.md"
NODE = "laptop"  # the README's first node
HARDENING = ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "CapabilityBoundingSet", "LoadCredential", "User")


def _service(name: str) -> dict[str, list[str]]:
    """The [Service] section's settings; a key may repeat (Environment=, LoadCredential=)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.case("S-08")
def test_units_verify_and_are_hardened(tmp_path: Path) -> None:
    """manager, node@ and bot units: systemd-analyze verify is silent; each runs hardened, secrets as credentials;
    each file a unit reads under /etc/codex-relay is one the README's deployment section writes"""
    # verify checks that ExecStart exists: a root holding the units, systemd's own, and the three commands.
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copytree(UNITS, root / "etc/systemd/system")
    for service in ("manager", "node", "bot"):
        command = root / "opt/codex-relay/.venv/bin" / f"codex-relay-{service}"
        command.parent.mkdir(parents=True, exist_ok=True)
        command.write_text("#!/bin/sh\n")
        command.chmod(0o755)
    names = ["codex-relay-manager.service", "codex-relay-node@laptop.service", "codex-relay-bot.service"]
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *names],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr

    for name in ("codex-relay-manager.service", "codex-relay-node@.service", "codex-relay-bot.service"):
        service = _service(name)
        missing = [key for key in HARDENING if key not in service]
        assert not missing, f"{name} lacks {missing}"
        secrets = [e for e in service["Environment"] if "TOKEN=" in e and "TOKEN_FILE=%d/" not in e]
        assert not secrets, f"{name} puts a secret in its environment: {secrets}"
    node = _service("codex-relay-node@.service")
    # SIGTERM to the node alone, and time for its default 60 s drain before systemd kills the rest.
    assert node["KillMode"] == ["mixed"] and int(node["TimeoutStopSec"][0]) > 60, node

    section = README.read_text().split("### Deployment with systemd", 1)[1].split("\n## ", 1)[0]
    written = set(re.findall(r"tee (/etc/codex-relay/\S+)", section))
    for name in ("codex-relay-manager.service", "codex-relay-node@.service", "codex-relay-bot.service"):
        assert name in section, f"the README's deployment section never names {name}"
        settings = "\n".join(ln for ln in (UNITS / name).read_text().splitlines() if not ln.startswith("#"))
        read = set(re.findall(r"/etc/codex-relay/[\w.%-]+", settings.replace("%i", NODE)))
        assert read and read <= written, f"{name} reads {sorted(read - written)}, which the README never writes"
