"""What a turn is doing, for the user's progress message: codex's items (commands, file changes, tool calls) as they
start and finish (item/started, item/completed), and the turn's token usage (thread/tokenUsage/updated)."""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any

from runtime.protocol.wire import Activity, StepStatus, TokenUsage

MAX_STEPS = 12          # the progress message shows the latest steps; older ones are only counted
DETAIL_CHARS = 600      # of a command's output (its tail), a diff or a tool's arguments: read at /verbose 2
DIFF_CHARS = 256_000    # of a file change's diffs in an approval prompt: the frame to the manager stays far below 1 MiB
STATUS: dict[str, StepStatus] = {"inProgress": "running", "completed": "done", "failed": "failed", "declined": "declined"}


def _tail(text: str, limit: int = DETAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _head(text: str, limit: int = DETAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _brief(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def shown_path(path: str, cwd: str) -> str:
    """A path as the user thinks of it: relative to the node's working directory when it lies inside."""
    rel = os.path.relpath(path, cwd) if os.path.isabs(path) and cwd else path
    return path if rel.startswith("..") else rel


def command_line(item: dict[str, Any]) -> str:
    """What codex runs, without its shell wrapper (`/bin/bash -lc '...'`): its parsed actions' commands."""
    actions = [str(a.get("command")) for a in item.get("commandActions") or [] if a.get("command")]
    return " && ".join(actions) if actions else str(item.get("command") or "")


def step(item: dict[str, Any], cwd: str) -> Activity | None:
    """One item as a step of the turn; None for what is not a step (messages, reasoning, plans)."""
    kind = item.get("type")
    status: StepStatus = STATUS.get(str(item.get("status") or "completed"), "done")
    if kind == "commandExecution":
        code = item.get("exitCode")
        return Activity(kind="command", title=command_line(item), status="failed" if code not in (None, 0) else status,
                        detail=_tail(str(item.get("aggregatedOutput") or "")))
    if kind == "fileChange":
        changes = item.get("changes") or []
        title = ", ".join(f"{shown_path(str(c.get('path')), cwd)} ({(c.get('kind') or {}).get('type', 'update')})"
                          for c in changes)
        return Activity(kind="files", title=title or "(no files)", status=status,
                        detail=_head("\n".join(str(c.get("diff") or "") for c in changes)))
    if kind in ("mcpToolCall", "dynamicToolCall"):
        name = ".".join(str(p) for p in (item.get("server") or item.get("namespace"), item.get("tool")) if p)
        result = item.get("error") or item.get("result") or item.get("contentItems")
        detail = _brief(item.get("arguments") or {}) + (f"\n→ {_brief(result)}" if result else "")
        return Activity(kind="tool", title=name, status=status, detail=_head(detail))
    if kind == "webSearch":
        return Activity(kind="tool", title=f"web search: {item.get('query') or ''}".strip(), status=status)
    if kind == "imageView":
        return Activity(kind="tool", title=f"view image {shown_path(str(item.get('path')), cwd)}", status=status)
    if kind == "collabAgentToolCall":
        return Activity(kind="tool", title=f"agent {item.get('tool') or ''}".strip(), status=status,
                        detail=_head(str(item.get("prompt") or "")))
    return None


def file_changes(item: dict[str, Any], cwd: str) -> list[dict[str, str]]:
    """A fileChange item's files with their diffs, for its approval prompt; the diffs are cut at DIFF_CHARS."""
    out, budget = [], DIFF_CHARS
    for change in item.get("changes") or []:
        diff = str(change.get("diff") or "")
        if len(diff) > budget:
            diff = diff[:budget] + f"\n… ({len(diff) - budget} more characters not shown)"
        budget = max(0, budget - len(diff))
        kind = str((change.get("kind") or {}).get("type", "update"))
        out.append({"path": shown_path(str(change.get("path")), cwd), "kind": kind, "diff": diff})
    return out


class Steps:
    """A turn's steps by codex item id, newest last; past MAX_STEPS the oldest are dropped and counted."""

    def __init__(self, cwd: str = "") -> None:
        self.cwd = cwd
        self.steps: OrderedDict[str, Activity] = OrderedDict()
        self.earlier = 0
        self.items: dict[str, dict[str, Any]] = {}  # unfinished fileChange items by id: their approval follows

    def on_item(self, item: dict[str, Any]) -> bool:
        """item/started or item/completed; True when the progress message has something new to show."""
        item_id = str(item.get("id") or "")
        if item.get("type") == "fileChange":  # kept while it may still be asked about, then let go
            if item.get("status") == "inProgress":
                self.items[item_id] = item
            else:
                self.items.pop(item_id, None)
        shown = step(item, self.cwd)
        if shown is None or not item_id:
            return False
        self.steps[item_id] = shown
        self.steps.move_to_end(item_id)
        while len(self.steps) > MAX_STEPS:
            self.steps.popitem(last=False)
            self.earlier += 1
        return True

    def latest(self) -> list[Activity]:
        return list(self.steps.values())


def add_usage(usage: TokenUsage | None, params: dict[str, Any]) -> TokenUsage:
    """thread/tokenUsage/updated: `last` is one model request's tokens, so a turn's are the sum over its requests."""
    info = params.get("tokenUsage") or {}
    last = info.get("last") or {}
    usage = usage or TokenUsage()
    usage.input_tokens += int(last.get("inputTokens") or 0)
    usage.cached_input_tokens += int(last.get("cachedInputTokens") or 0)
    usage.output_tokens += int(last.get("outputTokens") or 0)
    usage.reasoning_output_tokens += int(last.get("reasoningOutputTokens") or 0)
    usage.total_tokens += int(last.get("totalTokens") or 0)
    usage.context_tokens = int(last.get("totalTokens") or 0)
    usage.context_window = info.get("modelContextWindow") or usage.context_window
    return usage
