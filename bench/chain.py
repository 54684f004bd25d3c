"""5 chain overhead: a message injected into the fake Telegram -> the bot's final reply, against the Codex
turn time alone (the node's own `duration_ms` for the task), with the mock model upstream.

Also the first visible reply: the bot's placeholder. Turns run one at a time. The node talks to the
manager directly; the bot's two links keep their Toxiproxy hop, as Stack.start_bot builds them, so the
figure errs high.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

import aiohttp

from bench import stacks
from bench.figures import Figure, ms, pct
from harness.ends.telegram import FakeTelegram
from harness.stack.stack import Stack
from runtime.bot.context import chat_key
from runtime.node.config import NodeConfig
from runtime.protocol import Api, Event

NAME = "chain"
NODE = "bench-chain"
EDITS = ("sendMessage", "editMessageText")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--turns", type=int, default=100, help="measured turns")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured turns first (the first starts the thread)")
    p.add_argument("--timeout", type=float, default=60.0, help="give up on a turn after this many seconds")
    p.add_argument("--result", choices=("send", "replace"), default="send",
                   help="the chat's /result: the answer as a new message, or edited into the placeholder")


async def _results(s: Stack, http: aiohttp.ClientSession, key: str, into: asyncio.Queue[dict[str, Any]]) -> None:
    async with http.ws_connect(s.manager_url + Api.EVENTS, max_msg_size=0) as ws:
        async for frame in ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                event = json.loads(frame.data)
                if event.get("type") == Event.TASK_RESULT and event.get("chat_key") == key:
                    into.put_nowait(event["result"])


async def _reply_time(tg: FakeTelegram, chat_id: int, since: int, expect: str, timeout: float) -> float:
    """When the bot first showed `expect` in the chat, as a sent or edited message, by the fake's clock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        call = await tg.wait_call(None, chat_id, since, deadline - time.monotonic())
        since = call["seq"]
        if call["method"] in EDITS and expect in str(call["params"].get("text", "")):
            return float(call["time"])
    raise TimeoutError(f"the bot never showed {expect!r} within {timeout}s")


async def run(a: argparse.Namespace) -> list[Figure]:
    placeholder, added, turn_ms, total = [], [], [], []
    async with stacks.stack(NAME) as s:
        # The node as it runs for real: the harness's traffic log off (production's default).
        await s.add_node(NODE, manager_url=f"ws://127.0.0.1:{s.manager_port}{Api.NODE_WS}", appserver_log="",
                         heartbeat_interval=NodeConfig.heartbeat_interval, manager_silence=NodeConfig.manager_silence)
        tg = await s.start_bot()
        user = tg.user(Stack.USER)
        key = chat_key(user.chat_id)
        await s.call(Api.CHAT_SELECT, {"chat_key": key, "node_id": NODE, "result_mode": a.result})
        results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {s.control_token}"}) as http:
            watcher = asyncio.create_task(_results(s, http, key, results))
            try:
                for i in range(a.warmup + a.turns):
                    text = f"bench chain turn {i}"
                    since = await tg.last_seq()
                    sent = time.time()
                    await tg.post("message", {"chat_id": user.chat_id, "user_id": user.user_id, "text": text})
                    first = await tg.wait_call("sendMessage", user.chat_id, since, a.timeout)
                    final = await _reply_time(tg, user.chat_id, since, f"mock reply: {text}", a.timeout)
                    result = await asyncio.wait_for(results.get(), a.timeout)
                    assert result.get("ok"), f"turn {i} failed: {result}"
                    if i < a.warmup:
                        continue
                    placeholder.append(float(first["time"]) - sent)
                    total.append(final - sent)
                    turn_ms.append(float(result["duration_ms"]) / 1000)
                    added.append(total[-1] - turn_ms[-1])
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                    await watcher
    print(f"  placeholder p50={ms(pct(placeholder, 50))} p95={ms(pct(placeholder, 95))}; final reply "
          f"p50={ms(pct(total, 50))} p95={ms(pct(total, 95))}; codex turn (node) p50={ms(pct(turn_ms, 50))} "
          f"p95={ms(pct(turn_ms, 95))}; n={a.turns}", flush=True)
    base = (f"codex turn alone (node duration_ms) p50={ms(pct(turn_ms, 50))} p95={ms(pct(turn_ms, 95))}; "
            f"message->final reply p50={ms(pct(total, 50))} p95={ms(pct(total, 95))}; n={a.turns}")
    return [Figure("chain.added_p95", 1000 * pct(added, 95), "ms", base, "<= 150 ms", pct(added, 95) <= 0.150),
            Figure("chain.placeholder_p95", 1000 * pct(placeholder, 95), "ms",
                   f"message->placeholder p50={ms(pct(placeholder, 50))}; {base}", "<= 1000 ms",
                   pct(placeholder, 95) <= 1.0)]


if __name__ == "__main__":
    from bench.cli import main

    main([NAME, *sys.argv[1:]])
