"""A turn's steps and usage as the node reads them from codex's items (runtime/node/activity.py), and as the bot
shows them (runtime/bot/render.py): item shapes as codex 0.171's schema gives them."""
from __future__ import annotations

import msgspec

from runtime.bot import render
from runtime.node.activity import MAX_STEPS, Steps, add_usage, file_changes, step
from runtime.node.approvals import offered
from runtime.protocol import Decision

CWD = "/srv/app"
COMMAND = {"type": "commandExecution", "id": "call_1", "command": "/bin/bash -lc 'pytest -q'", "cwd": CWD,
           "status": "completed", "commandActions": [{"type": "unknown", "command": "pytest -q"}],
           "aggregatedOutput": "1 passed\n", "exitCode": 0}
FILES = {"type": "fileChange", "id": "call_2", "status": "inProgress",
         "changes": [{"path": f"{CWD}/src/a.py", "kind": {"type": "update", "move_path": None},
                      "diff": "@@ -1 +1 @@\n-a\n+b\n"},
                     {"path": "/etc/hosts", "kind": {"type": "add"}, "diff": "x\n"}]}
TOOL = {"type": "mcpToolCall", "id": "call_3", "server": "docs", "tool": "search", "status": "failed",
        "arguments": {"q": "retry"}, "error": {"message": "offline"}}


def test_steps_by_kind() -> None:
    cmd, files, tool = (msgspec.to_builtins(step(item, CWD)) for item in (COMMAND, FILES, TOOL))
    assert cmd == {"kind": "command", "title": "pytest -q", "status": "done", "detail": "1 passed"}
    assert files["title"] == "src/a.py (update), /etc/hosts (add)" and "status" not in files  # running: the default
    assert tool["title"] == "docs.search" and tool["status"] == "failed" and "offline" in tool["detail"]
    assert step({**COMMAND, "exitCode": 2}, CWD).status == "failed"  # type: ignore[union-attr]
    assert step({"type": "agentMessage", "id": "m", "text": "hi"}, CWD) is None


def test_steps_are_bounded_and_file_items_let_go() -> None:
    steps = Steps(CWD)
    for i in range(MAX_STEPS + 5):
        assert steps.on_item({**COMMAND, "id": f"c{i}"})
    assert len(steps.latest()) == MAX_STEPS and steps.earlier == 5
    steps.on_item(FILES)
    assert file_changes(steps.items["call_2"], CWD)[0] == {"path": "src/a.py", "kind": "update",
                                                           "diff": "@@ -1 +1 @@\n-a\n+b\n"}
    steps.on_item({**FILES, "status": "completed"})
    assert "call_2" not in steps.items


def test_usage_sums_each_request() -> None:
    def update(total: int, last: int) -> dict[str, object]:
        return {"tokenUsage": {"total": {"totalTokens": total}, "modelContextWindow": 1000,
                               "last": {"totalTokens": last, "inputTokens": last - 5, "cachedInputTokens": 3,
                                        "outputTokens": 5, "reasoningOutputTokens": 1}}}
    usage = add_usage(add_usage(None, update(15, 15)), update(40, 25))
    assert msgspec.to_builtins(usage) == {"input_tokens": 30, "cached_input_tokens": 6, "output_tokens": 10,
                                          "reasoning_output_tokens": 2, "total_tokens": 40, "context_tokens": 25,
                                          "context_window": 1000}
    assert render.usage(msgspec.to_builtins(usage)) == \
        "🔢 40 tokens: in 30 (6 cached), out 10 (2 reasoning); context 25 of 1,000 (2%)"


def test_progress_fits_one_message() -> None:
    long = [{"kind": "command", "title": "x" * 500, "status": "done", "detail": "y\n" * 400}] * MAX_STEPS
    for verbose in (0, 1, 2):
        text = render.progress("n1", "z" * 10_000, long, 3, verbose)
        assert len(text) <= render.MAX_PROGRESS and text.endswith("⏳ still working on n1…"), verbose
    assert render.progress("n1", "", [], 0, 1) == render.placeholder("n1")
    # codex's retry notice with the steps: above the working line, which is never cut off.
    notice = "reconnecting 2/5: unexpected status 503"
    for verbose in (0, 1, 2):
        text = render.progress("n1", "z" * 10_000, long, 3, verbose, notice)
        assert len(text) <= render.MAX_PROGRESS and text.endswith(f"🔄 {notice}\n\n⏳ still working on n1…"), verbose
    assert render.progress("n1", "", [], 0, 1, notice) == f"🔄 {notice}\n\n⏳ still working on n1…"


def test_offered_decisions() -> None:
    escalated = {"availableDecisions": ["accept", {"acceptWithExecpolicyAmendment": {"execpolicy_amendment": ["x"]}},
                                        "cancel"]}
    assert offered(escalated) == [Decision.ACCEPT, Decision.CANCEL]
    assert offered({}) == list(Decision)  # a file change: codex restricts nothing
    text, markup = render.approval({"approval_id": "appr_1", "node_id": "n1", "kind": "command",
                                    "command": "echo hi", "decisions": ["accept", "cancel"]})
    assert markup is not None and [b.text for row in markup.inline_keyboard for b in row] == \
        ["✅ Approve", "⏹ Decline and stop the turn"]


def test_usage_under_the_formatted_answer() -> None:
    """The usage line joins the answer's last message when it fits there, else follows it; notes come after."""
    from runtime.bot import formatting, turns
    usage = {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    line = render.usage(usage)
    short = turns.answer({"text": "**done** & dusted", "usage": usage, "notes": ["refused x"]}, 8)
    assert [p.plain for p in short.parts] == [f"done & dusted\n\n{line}", "ℹ️ refused x"]
    assert short.parts[0].html == f"<b>done</b> &amp; dusted\n\n{line}"
    full = turns.answer({"text": "y" * formatting.MAX_TEXT, "usage": usage}, 8)
    assert [p.plain for p in full.parts] == ["y" * formatting.MAX_TEXT, line]
    assert turns.answer({"text": "x"}, 8).parts[-1].plain == "x"  # no usage reported: no line
