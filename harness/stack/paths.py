"""Where the pinned tools live, so no other module spells a path or guesses at an install.

Everything is relative to this checkout; scripts/setup.sh is what puts the files there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

REPO_ROOT: Final[Path] = Path(__file__).resolve().parents[2]
REPORTS_DIR: Final[Path] = REPO_ROOT / "reports"

# The native binary: node_modules/.bin/codex is a Node wrapper that adds a process per spawn.
_CODEX_NATIVE: Final[Path] = (
    REPO_ROOT / "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
)
_TOOLS_BIN: Final[Path] = REPO_ROOT / ".tools/bin"


def _existing(default: Path, env: str | None = None) -> Path:
    override = os.environ.get(env) if env else None
    if override:
        path = Path(override)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} (from {env}) is missing: fix {env}, or unset it and run scripts/setup.sh"
            )
        return path
    if not default.exists():
        raise FileNotFoundError(f"{default} is missing: run scripts/setup.sh")
    return default


def codex_bin() -> Path:
    return _existing(_CODEX_NATIVE, "CODEX_BIN")


def toxiproxy_server() -> Path:
    return _existing(_TOOLS_BIN / "toxiproxy-server", "TOXIPROXY_SERVER")


def toxiproxy_cli() -> Path:
    return _existing(_TOOLS_BIN / "toxiproxy-cli")


def allure_bin() -> Path:
    return _existing(REPO_ROOT / "node_modules/.bin/allure")


def venv_python() -> Path:
    return _existing(REPO_ROOT / ".venv/bin/python")
