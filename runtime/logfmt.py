"""key=value logging shared by every service, so one grep by trace_id/node_id/task_id finds a case."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

MAX_VALUE = 2000  # characters of one value; a peer's megabyte frame is not copied into the log
ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(c: str) -> str:
    return ESCAPES.get(c) or (c if c.isprintable() else f"\\u{ord(c):04x}")


def _quote(value: Any, limit: int = MAX_VALUE) -> str:
    """One value, safe for one line: every line break (CR, U+0085, U+2028, ...) and control character is
    escaped, so no id or text a peer sends can forge a log line. Readers split lines on \\n only."""
    text = str(value)
    if len(text) > limit:
        text = f"{text[:limit]}...(+{len(text) - limit} chars)"
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return '"' + "".join(_escape(c) for c in text) + '"'


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}"]
        fields: dict[str, Any] = getattr(record, "kv", {})
        if "op" not in fields:
            parts.append(f"msg={_quote(record.getMessage())}")
        parts.extend(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
        if record.exc_info and record.levelno >= logging.ERROR:
            # Unexpected failures keep their traceback for the operator's log file, on one line.
            parts.append(f"exc={_quote(self.formatException(record.exc_info), limit=1 << 16)}")
        return " ".join(parts)


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log(logger: logging.Logger, level: int, op: str, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, op, extra={"kv": {"op": op, **fields}})
