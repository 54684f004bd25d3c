"""The nemesis's fault kinds, each declared once: what it targets, how it is drawn, how it is done and undone."""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from harness.faults import backlog, hostile, signals
from harness.faults.sqlite_lock import db_locked
from harness.faults.window import FaultWindow
from harness.stack.procs import Proc, log_fields
from runtime.backoff import Backoff

if TYPE_CHECKING:
    from harness.faults.toxics import Toxics
    from harness.stack.stack import Stack

# A fault's scope: the window it was active for, or None when there was nothing to fault right now.
Scope = Callable[["Stack", str, dict[str, Any]], AbstractAsyncContextManager[FaultWindow | None]]
LATENCIES_MS = (300, 1000, 2000)
DETECT_TIMEOUT_S = 20.0  # how long a half-open link may stay unnoticed before the fault gives up waiting
TURN_WAIT_S = 10.0       # how long bot_kill waits for a turn through the bot to be running
TURN_POLL_S = 0.02       # how often it looks: chat turns last a few hundred ms
BOT_KILLS = (1, 1, 2, 3)  # kills in a row of one bot_kill, drawn by the seed: mostly one, sometimes a crash loop


@dataclass(frozen=True)
class Kind:
    name: str
    target: Literal["manager", "upstream", "bot", "node"]  # "node": one node, drawn from the schedule's seed
    color: str                                        # its shade in the latency figure
    scope: Scope
    draw: Callable[[random.Random], dict[str, Any]]  # the kind's parameters, from the schedule's seed
    after: Callable[[Stack], Awaitable[None]] | None  # waited for once the fault is undone, before recovery probes


KINDS: dict[str, Kind] = {}


def _no_params(rng: random.Random) -> dict[str, Any]:
    return {}


def fault(name: str, target: Literal["manager", "upstream", "bot", "node"], color: str,
          draw: Callable[[random.Random], dict[str, Any]] = _no_params,
          after: Callable[[Stack], Awaitable[None]] | None = None) -> Callable[[Scope], Scope]:
    def register(scope: Scope) -> Scope:
        KINDS[name] = Kind(name, target, color, scope, draw, after)
        return scope
    return register


async def _manager_back(stack: Stack) -> None:
    await stack.wait_manager(timeout=30)


@fault("manager_kill", "manager", "tab:red", after=_manager_back)
@asynccontextmanager
async def manager_kill(stack: Stack, target: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow | None]:
    async with signals.killed(stack.procs["manager"], stack.faults) as w:
        yield w


@fault("node_kill", "node", "tab:orange")
@asynccontextmanager
async def node_kill(stack: Stack, target: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow | None]:
    async with signals.killed(stack.procs[target], stack.faults) as w:
        yield w


DRAIN_DEFAULT_S = 60.0  # the node's own drain_timeout default (runtime/node/config.py), unless the stack set one
EXIT_MARGIN_S = 15.0    # past the drain: interrupting the rest and writing their results


@fault("node_sigterm", "node", "darkorange")
@asynccontextmanager
async def node_sigterm(stack: Stack, target: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow | None]:
    """A graceful stop (R-02): the node takes no new work, drains its turns, exits; it is started again after."""
    drain = float(stack.node_settings[target].get("drain_timeout", DRAIN_DEFAULT_S))
    async with signals.terminated(stack.procs[target], stack.faults, drain + EXIT_MARGIN_S) as w:
        yield w


async def _bot_back(stack: Stack) -> None:
    bot = stack.procs["bot"]
    await bot.wait_log("bot_ready", timeout=30, seen=bot.starts - 1)  # one bot_ready per start


def bot_turns_running(bot: Proc) -> int:
    """Turns the bot's current process started (or resumed from its predecessor's journal) and has not finished,
    read from its log since its last start."""
    life = bot.log_text().rsplit("\n# harness: start", 1)[-1]
    started, ended = set(), set()
    for line in life.split("\n"):
        fields = log_fields(line)
        if fields.get("op") in ("turn_started", "turn_resumed"):
            started.add(fields.get("task_id"))
        elif fields.get("op") == "turn_final":
            ended.add(fields.get("task_id"))
    return len(started - ended)


def _crash_loop(rng: random.Random) -> dict[str, Any]:
    return {"kills": rng.choice(BOT_KILLS), "wait_for_turn_s": TURN_WAIT_S}


async def _until_turn_running(bot: Proc, wait_s: float) -> int:
    """Wait (bounded) until the bot has a turn running; how many it has."""
    running = 0
    async for _ in Backoff(TURN_POLL_S, factor=1).tries(wait_s):
        if (running := bot_turns_running(bot)) > 0:
            break
    return running


@fault("bot_kill", "bot", "crimson", draw=_crash_loop, after=_bot_back)
@asynccontextmanager
async def bot_kill(stack: Stack, target: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow | None]:
    """SIGKILL the bot while a turn through it runs (R-04's case): the turn finishes while the bot is down, and the
    restarted bot must show its outcome once. Each kill waits for such a turn, up to wait_for_turn_s. With kills > 1
    it is a crash loop, as a supervisor's restarts make one: each restarted bot is killed again as soon as it has a
    turn running, while it is still catching up on the events its predecessor left."""
    if "bot" not in stack.procs:
        yield None  # no bot in this stack: nothing to fault
        return
    bot = stack.procs["bot"]
    running = [await _until_turn_running(bot, params["wait_for_turn_s"])]
    async with signals.killed(bot, stack.faults) as w:
        for _ in range(params["kills"] - 1):
            bot.start()
            try:
                await _bot_back(stack)
                running.append(await _until_turn_running(bot, params["wait_for_turn_s"]))
            finally:
                bot.kill()  # down again either way: the scope's end starts the one bot there must be
        w.params["turns_running"] = running
        yield w


@fault("node_stop", "node", "tab:purple")
@asynccontextmanager
async def node_stop(stack: Stack, target: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow | None]:
    async with signals.stopped(stack.procs[target].pid, target, stack.faults) as w:
        yield w


@fault("codex_stop", "node", "tab:pink")
@asynccontextmanager
async def codex_stop(stack: Stack, target: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow | None]:
    codex = stack.procs[target].children_named("codex")
    if not codex:
        yield None  # the node has no codex child right now
        return
    async with signals.stopped(codex[0].pid, f"{target}/codex", stack.faults) as w:
        yield w


def _latency(rng: random.Random) -> dict[str, Any]:
    ms = rng.choice(LATENCIES_MS)
    return {"latency_ms": ms, "jitter_ms": ms // 2}


def _on_link(toxic: Callable[[Toxics, str, dict[str, Any]], AbstractAsyncContextManager[FaultWindow]]) -> Scope:
    """A Toxiproxy fault on the target node's link to the manager."""
    @asynccontextmanager
    async def scope(stack: Stack, target: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow | None]:
        assert stack.toxics is not None
        async with toxic(stack.toxics, stack.manager_link(target), params) as w:
            yield w
    return scope


@asynccontextmanager
async def _latency_both_ways(toxics: Toxics, link: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow]:
    ms, jitter = params["latency_ms"], params["jitter_ms"]
    async with toxics.latency(link, ms, jitter) as w, toxics.latency(link, ms, jitter, stream="upstream"):
        yield w


fault("latency", "node", "tab:olive", draw=_latency)(_on_link(_latency_both_ways))
fault("reset_peer", "node", "tab:cyan")(_on_link(lambda toxics, link, params: toxics.reset_peer(link)))
fault("link_down", "node", "tab:blue")(_on_link(lambda toxics, link, params: toxics.link_down(link)))


def _slow_consumer(rng: random.Random) -> dict[str, Any]:
    # 12 x 512 KB: past the loopback socket buffers on both sides of the proxy, under the manager's 8 MiB
    # send_budget, so the manager's queue holds the rest and its bounds are what the node runs into.
    return {"rate_kb_s": 1, "calls": 12, "payload_kb": 512}


@fault("node_slow_consumer", "node", "tab:green", draw=_slow_consumer)
@asynccontextmanager
async def node_slow_consumer(stack: Stack, target: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow | None]:
    """The node stops reading (its link takes 1 KB/s towards it, TCP stays up) while large calls are queued for it."""
    assert stack.toxics is not None
    async with stack.toxics.throttle(stack.manager_link(target), params["rate_kb_s"]) as w, \
            backlog.queued(stack, target, params["calls"], params["payload_kb"], timeout_s=DETECT_TIMEOUT_S):
        yield w


@fault("half_open", "node", "gold")
@asynccontextmanager
async def half_open(stack: Stack, target: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow | None]:
    """Data held both ways on node<->manager, the connection open: only the node's manager_silence and the
    manager's offline_timeout can end it, so the window lasts until both have given up on the link (or
    DETECT_TIMEOUT_S passed). The node gives up by its own silence check (`manager_silent`), or sees the socket
    close (`link_down`) when the manager's close gets through first: Toxiproxy holds data, not a close."""
    assert stack.toxics is not None
    link, node = stack.manager_link(target), stack.procs[target]
    before = {op: len(node.log_lines(op)) for op in GAVE_UP}
    async with stack.toxics.hold(link) as w, stack.toxics.hold(link, stream="upstream"):
        yield w
        try:
            w.params["node_gave_up"] = await _first_new_line(node, before, DETECT_TIMEOUT_S)
            await stack.wait_online(target, online=False, timeout=DETECT_TIMEOUT_S)
            w.params["detected_after_s"] = round(time.time() - w.start, 2)
        except (TimeoutError, RuntimeError) as exc:
            w.params["undetected"] = str(exc)


GAVE_UP = ("manager_silent", "link_down")  # a node's log ops that say it has given up on its link


async def _first_new_line(proc: Proc, before: dict[str, int], timeout: float) -> str:
    """Which of `before`'s ops the process logged first past the counts given; raises at the timeout."""
    async for _ in Backoff(0.05, factor=1).tries(timeout):
        for op, seen in before.items():
            if len(proc.log_lines(op)) > seen:
                return op
    raise TimeoutError(f"{proc.name} logged none of {', '.join(before)} within {timeout:g}s; see {proc.log_path}")


def _hostility(rng: random.Random) -> dict[str, Any]:
    return {"idle_sockets": 16, "ping_interval_s": 0.5}


@fault("hostile_peer", "manager", "black", draw=_hostility)
@asynccontextmanager
async def hostile_peer(stack: Stack, target: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow | None]:
    """A scripted hostile peer on the manager's own ports for the window; the real nodes must not notice."""
    stop = asyncio.Event()
    async with stack.faults.window("hostile_peer", "manager", **params) as w:
        peer = asyncio.create_task(hostile.attack(stack.manager_url, stack.control_token,
                                                  hostile.Hostility(**params), stop))
        try:
            yield w
        finally:
            stop.set()
            w.params["answers"] = await peer


@fault("upstream_drop", "upstream", "tab:brown")
@asynccontextmanager
async def upstream_drop(stack: Stack, target: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow | None]:
    async with stack.faults.window("upstream_drop", "upstream") as w:
        await stack.upstream("POST", "/_mock/mode", {"behavior": "drop"})
        try:
            yield w
        finally:
            await stack.upstream("POST", "/_mock/mode", {"behavior": None})


@fault("db_lock", "manager", "tab:gray")
@asynccontextmanager
async def db_lock(stack: Stack, target: str, params: dict[str, Any]) -> AsyncIterator[FaultWindow | None]:
    async with db_locked(stack.db_path, stack.faults) as w:
        yield w
