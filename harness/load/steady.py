"""The soak's load: a low constant rate of operations across the nodes, each recorded in the history.

The mix is Codex turns through chats (dispatch_text), app-server calls, turns that ask for an
approval, which this generator approves, and turns a Telegram user sends through the real bot (chat).
Every turn has a unique prompt, so the mock model's serve count per prompt proves it ran at most once.
Ops arrive on a schedule, not after the previous one ends (an open model), so a stalled node cannot slow
the load down and hide itself.
"""
from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from harness.checkers import shown
from harness.checkers.checkers import CHAT_UNANSWERED
from harness.ends.telegram import FakeTelegram
from harness.ends.upstream import prompt_key
from harness.history.history import History, Op
from runtime.backoff import Backoff
from runtime.protocol import Api, new_id

ANSWER_GRACE_S = 10.0   # the client waits this much past the manager's own timeout before calling an op unknown
APPROVAL_POLL_S = 0.2
KINDS = ("dispatch_text", "appserver", "approval", "chat")
CHAT_OPS = ("chat", "chat_probe")  # through Telegram and the bot: what a bot kill can hurt
CHAT_USER = 1002                   # Stack.USER: allowed, not an admin
FIRST_CHAT = 900_001               # chat ids of the soak's chat ops; each op has one to itself


@dataclass(frozen=True)
class LoadSettings:
    rate_per_s: float
    mix: dict[str, float]
    op_timeout_s: float
    max_inflight: int
    chats_per_node: int


class Client:
    """The control API as an operator's client sees it: a trace id per call, no retries."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self.http, self.base_url, self.token = http, base_url, token

    async def call(self, method: str, path: str, body: dict[str, Any], timeout: float,
                   trace_id: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.token}", "X-Trace-Id": trace_id or new_id("tr")}
        kw: dict[str, Any] = {"params": body} if method == "GET" else {"json": body}
        async with self.http.request(method, self.base_url + path, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout), **kw) as resp:
            return resp.status, await resp.json()


def judge(op: Op, status: int, env: dict[str, Any], expect: str | None) -> None:
    """Fill the op's outcome from the envelope: outer ok is the control plane, result.ok the business."""
    result: dict[str, Any] = env["result"] if isinstance(env.get("result"), dict) else {}
    if status != 200 or not env.get("ok"):
        op.outcome, op.error_kind, op.detail = "fail", env.get("error_kind") or f"http_{status}", env.get("error")
    elif not result.get("ok"):
        op.outcome, op.error_kind, op.retriable = "fail", result.get("error_kind"), result.get("retriable")
        op.detail = str(result.get("error") or "")[:200]
    elif expect is not None and expect not in str(result.get("text")):
        # A wrong answer is worse than none: a reply crossed over from another task.
        op.outcome, op.error_kind, op.detail = "fail", "wrong_result", f"expected {expect!r}, got {result.get('text')!r}"
    else:
        op.outcome = "ok"


class Operations:
    """The operations themselves; the steady generator and the nemesis's recovery probes share them."""

    def __init__(self, client: Client, history: History, settings: LoadSettings, tag: str,
                 telegram: FakeTelegram | None = None) -> None:
        self.client, self.history, self.settings, self.tag = client, history, settings, tag
        self.telegram = telegram
        self._chat_ids = itertools.count(FIRST_CHAT)

    def chat(self, node: str, i: int) -> str:
        return f"{self.tag}-{node}-c{i}"

    async def run(self, kind: str, node: str, chat: str, timeout: float | None = None) -> Op:
        timeout = timeout or self.settings.op_timeout_s
        op = Op(op_id=new_id("op"), op=kind, node=node, start=time.time(), trace_id=new_id("tr"))
        try:
            if kind == "appserver":
                body = {"node_id": node, "method": "thread/list", "params": {"limit": 5}, "timeout": timeout}
                status, env = await self.client.call("POST", Api.APPSERVER, body, timeout + ANSWER_GRACE_S, op.trace_id)
                judge(op, status, env, None)
            elif kind in CHAT_OPS:
                await self._chat(op, timeout)
            else:
                await self._turn(op, chat, timeout, approve=kind == "approval")
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            op.outcome, op.detail = "unknown", f"{type(exc).__name__}: {exc}"[:200]
        except asyncio.CancelledError:
            op.outcome, op.detail = "unknown", "stopped before the answer came"
            raise
        finally:
            op.end = time.time()
            self.history.add(op)
        return op

    async def _turn(self, op: Op, chat: str, timeout: float, approve: bool) -> None:
        op.task_id = new_id("task")
        text = f"{op.op} {op.task_id}"
        op.prompt = prompt_key(text)
        # steer false: each op is a turn of its own, so its answer is its own prompt's. One that arrives while
        # another runs on its chat waits for it (the chat queues) instead of joining it.
        body = {"chat_key": chat, "node_id": op.node, "text": text + (" [[mock:approve]]" if approve else ""),
                "timeout": timeout, "task_id": op.task_id, "steer": False}
        turn = asyncio.ensure_future(self.client.call("POST", Api.DISPATCH_TEXT, body, timeout + ANSWER_GRACE_S,
                                                      op.trace_id))
        decider = asyncio.ensure_future(self._approve(op.task_id, timeout)) if approve else None
        try:
            status, env = await turn
        finally:
            turn.cancel()
            if decider is not None:
                decider.cancel()
        judge(op, status, env, "relay-approved" if approve else f"mock reply: {op.prompt}")

    async def _chat(self, op: Op, timeout: float) -> None:
        """A turn as a Telegram user sends it: fake Bot API -> the real bot -> manager -> node. The op has a chat
        of its own, so whatever the bot shows there is this turn's; its outcome is what the chat shows."""
        if self.telegram is None:
            raise RuntimeError("a chat op needs the stack's bot: start it with Stack.start_bot() first")
        op.chat_id = next(self._chat_ids)
        text = f"{op.op} {op.op_id}"
        op.prompt = prompt_key(text)
        # The chat's node is picked through the control API, as the /node button's call does: the op is the turn.
        status, env = await self.client.call("POST", Api.CHAT_SELECT, {"chat_key": f"tg:{op.chat_id}",
                                                                      "node_id": op.node}, 10, op.trace_id)
        judge(op, status, env, None)
        if op.outcome != "ok":
            return  # nothing was sent to the bot: a failed op, the model never asked
        op.outcome = "unknown"
        user = self.telegram.user(CHAT_USER, op.chat_id)
        since = await user.say(text)
        deadline = time.monotonic() + timeout + ANSWER_GRACE_S
        while (left := deadline - time.monotonic()) > 0:
            texts = [m["text"] for m in await user.messages() if m.get("from_bot")]
            seen = shown.classify(texts, op.prompt)
            if seen.answers:
                op.outcome = "ok"
                return
            if seen.failures:
                op.outcome, op.error_kind = "fail", seen.failures[0]
                return
            call = await self.telegram.wait_call(None, op.chat_id, since, min(left, 5.0), required=False)
            since = int(call.get("seq", since))
        op.detail = CHAT_UNANSWERED

    async def _approve(self, task_id: str, timeout: float) -> None:
        """Approve the turn's command as a user would: once it shows up among the pending approvals."""
        async for _ in Backoff(APPROVAL_POLL_S, factor=1).tries(timeout):
            try:
                _, env = await self.client.call("GET", Api.APPROVALS, {"state": "pending"}, 5)
                for a in (env.get("result") or {}).get("approvals", []):
                    if a.get("task_id") == task_id:
                        await self.client.call("POST", Api.APPROVALS_DECIDE, {
                            "approval_id": a["approval_id"], "decision": "accept", "decided_by": "soak"}, 5)
                        return
            except (TimeoutError, aiohttp.ClientError, ValueError):
                pass  # the manager may be down right now; the turn's own outcome will say so


class Steady:
    """Starts one op every 1/rate seconds, round-robin over the nodes, kinds drawn from the seeded mix."""

    def __init__(self, ops: Operations, nodes: list[str], rng: random.Random) -> None:
        self.ops, self.nodes, self.rng = ops, nodes, rng
        self.inflight: set[asyncio.Task[Op]] = set()
        self.started = 0

    async def run(self, stop: asyncio.Event, until: float) -> None:
        s = self.ops.settings
        kinds = [k for k in KINDS if s.mix.get(k, 0) > 0]
        weights = [s.mix[k] for k in kinds]
        interval = 1 / s.rate_per_s
        max_ops = int((until - time.time()) * s.rate_per_s * 1.1) + 10  # bounded, whatever the clock does
        next_at = time.monotonic()
        while not stop.is_set() and time.time() < until and self.started < max_ops:
            while len(self.inflight) >= s.max_inflight and not stop.is_set():
                await asyncio.wait(self.inflight, timeout=1, return_when=asyncio.FIRST_COMPLETED)
            node = self.nodes[self.started % len(self.nodes)]
            kind = self.rng.choices(kinds, weights)[0]
            chat = self.ops.chat(node, self.rng.randrange(s.chats_per_node))
            task = asyncio.create_task(self.ops.run(kind, node, chat))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
            self.started += 1
            next_at += interval
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            except TimeoutError:
                pass
        await self.drain(0 if stop.is_set() else s.op_timeout_s + ANSWER_GRACE_S)

    async def drain(self, wait_s: float) -> None:
        """Let ops in flight finish for up to wait_s; the rest are recorded as unknown."""
        if self.inflight and wait_s > 0:
            await asyncio.wait(set(self.inflight), timeout=wait_s)
        for task in list(self.inflight):
            task.cancel()
        if self.inflight:
            await asyncio.gather(*self.inflight, return_exceptions=True)
