"""H-10: a stack with a node, the bot and fresh tokens; after traffic, every file of the run and every process searched."""
from __future__ import annotations

import itertools
from pathlib import Path

import psutil
import pytest

from harness.checkers import secrets
from harness.ends.telegram import FakeTelegram
from harness.stack import stack as stacks
from harness.stack.stack import Stack
from runtime.protocol import Api, new_id

NODE = "h10"
_chats = itertools.count(710_001)


@pytest.mark.case("H-10")
async def test_no_secret_outside_env(stack: Stack, tg: FakeTelegram, run_dir: Path) -> None:
    """tokens reach the processes by environment or file, never argv; no token appears anywhere under reports/"""
    fleet = (await stack.call(Api.TOKENS, {"note": "h10 fleet"}))["token"]  # minted, shown once, never used
    mine = {"control token": stack.control_token, "bot token": stack.bot_token,
            f"node token {NODE}": stack.node_settings[NODE]["token"], "fleet token": fleet}
    # Traffic on every path a token travels: control calls, a turn, the bot polling Telegram and calling the manager.
    await stack.call(Api.DISPATCH_TEXT, {"chat_key": "h10", "node_id": NODE, "text": f"h10 {new_id('p')}", "timeout": 30})
    await stack.call(Api.APPSERVER, {"node_id": NODE, "method": "thread/list", "params": {"limit": 1}, "timeout": 30})
    user = tg.user(Stack.ADMIN, next(_chats))
    await user.sent(await user.say("/node"))

    processes = [psutil.Process(p.pid) for p in stack.procs.values() if p.alive]
    processes += [c for p in stack.procs.values() if p.alive for c in p.children()]
    in_argv = secrets.in_processes(processes, mine)
    assert not in_argv, f"a token is on a command line: {in_argv}"
    codex = [c for p in stack.procs.values() if p.alive for c in p.children_named("codex")]
    assert codex, "no codex child to look at"
    in_codex = secrets.in_processes(codex, mine, environment=True)
    assert not in_codex, f"codex (which runs the model's commands) sees a token in its environment: {in_codex}"
    # This stack's tokens, and those of every stack this process booted before it (their records are written).
    leaks = secrets.in_files(run_dir, {**stacks.ISSUED, **mine})
    assert not leaks, f"tokens under {run_dir}: {leaks}"
