"""The codex app-server traffic, both ways, as JSON lines in a file (the `appserver_log` setting), for an operator
debugging a node: each line is `{"t", "dir", "gen", "msg"}` like codex-transcripts, `dir` `>>` towards codex.

Values under keys that name a secret are redacted. The file rotates (logging's RotatingFileHandler), so a setting
left on cannot fill the disk.
"""
from __future__ import annotations

import logging
import re
import time
from logging.handlers import RotatingFileHandler
from typing import Any, Final

from runtime.protocol import encode_bytes

SECRET_KEY: Final = re.compile(r"token|secret|password|passwd|api_?key|authorization|credential|cookie", re.I)
REDACTED: Final = "[redacted]"
MAX_BYTES: Final = 64 << 20
BACKUPS: Final = 2


def redact(value: Any) -> Any:
    """A copy with every value under a secret-looking key replaced; token counts (`inputTokens`…) are not secrets."""
    if isinstance(value, dict):
        return {k: REDACTED if SECRET_KEY.search(k) and not isinstance(v, int | float | dict | list) else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


class Traffic:
    """Off (every call a no-op) unless given a path."""

    def __init__(self, path: str, node_id: str) -> None:
        self.logger: logging.Logger | None = None
        if path:
            handler = RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(message)s"))
            self.logger = logging.getLogger(f"codex_node.traffic.{node_id}")
            self.logger.propagate = False  # its lines belong in the file, not in the node's log
            self.logger.setLevel(logging.INFO)
            self.logger.addHandler(handler)

    def record(self, direction: str, generation: int, msg: Any) -> None:
        if self.logger is not None:
            line = {"t": round(time.time(), 4), "dir": direction, "gen": generation, "msg": redact(msg)}
            self.logger.info(encode_bytes(line).decode())

    def close(self) -> None:
        if self.logger is not None:
            for handler in list(self.logger.handlers):
                handler.close()
                self.logger.removeHandler(handler)
