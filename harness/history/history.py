"""The run's history, Jepsen style: every operation and every fault window, one JSON line each, append-only.

Checkers judge the whole file after the run, so a history recorded once can be judged again (`harness check`).
"""
from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Outcome = Literal["ok", "fail", "unknown"]


@dataclass
class Op:
    """One operation as its client saw it; `unknown` means the answer never came (a timeout, a dead socket)."""
    op_id: str
    op: str                      # dispatch_text, appserver, approval, chat, probe, chat_probe, ...
    node: str
    start: float
    end: float | None = None
    outcome: Outcome = "unknown"
    error_kind: str | None = None
    retriable: bool | None = None
    trace_id: str | None = None
    task_id: str | None = None
    prompt: str | None = None    # the mock's key for the prompt: its serve count is the evidence of execution
    detail: str | None = None
    chat_id: int | None = None   # a turn sent through the bot: the Telegram chat it has to itself
    type: str = "op"

    @property
    def latency_ms(self) -> float | None:
        return None if self.end is None else (self.end - self.start) * 1000


@dataclass
class Fault:
    """A fault window; `scope` is the node it hurts, or "all" for the manager, its DB and the upstream."""
    fault: str
    target: str
    scope: str
    start: float
    end: float
    params: dict[str, Any] = field(default_factory=dict)
    type: str = "fault"


@dataclass
class Resolution:
    """What an op's task became, read from the manager's DB after recovery: how an `unknown` is settled."""
    op_id: str
    task_id: str
    state: str                   # done, failed, cancelled, open, or absent (the manager never stored it)
    error_kind: str | None = None
    type: str = "resolve"


Record = Op | Fault | Resolution
_TYPES: dict[str, type[Op] | type[Fault] | type[Resolution]] = {"op": Op, "fault": Fault, "resolve": Resolution}


class History:
    """Appends records as they complete; thread-safe, because Locust's greenlets and asyncio both write."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.records: list[Record] = []

    def add(self, record: Record) -> None:
        line = json.dumps(asdict(record), separators=(",", ":")) + "\n"
        with self._lock:
            self.records.append(record)
            with open(self.path, "a") as fh:
                fh.write(line)

    @property
    def ops(self) -> list[Op]:
        return [r for r in self.records if isinstance(r, Op)]

    @property
    def faults(self) -> list[Fault]:
        return [r for r in self.records if isinstance(r, Fault)]


def load(*paths: Path) -> list[Record]:
    """Every record of one or more history files (a distributed burst writes one per worker)."""
    out: list[Record] = []
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            raw = json.loads(line)
            kind = _TYPES.get(raw.get("type", ""))
            if kind is None:
                raise ValueError(f"{path}:{n}: unknown record type {raw.get('type')!r}")
            out.append(kind(**raw))
    return out


def split(records: list[Record]) -> tuple[list[Op], list[Fault], dict[str, Resolution]]:
    ops = [r for r in records if isinstance(r, Op)]
    faults = [r for r in records if isinstance(r, Fault)]
    resolved = {r.op_id: r for r in records if isinstance(r, Resolution)}
    return ops, faults, resolved
