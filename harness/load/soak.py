"""A soak: steady load on a live stack for a set time, faults on a seeded schedule, resources sampled,
then evidence gathered after recovery and the whole history judged by the checkers.

It prints its progress as it goes, and a stop (Ctrl-C) ends it early with a report on what ran.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from harness.checkers import checkers
from harness.checkers.checkers import Summary
from harness.faults.kinds import KINDS
from harness.faults.nemesis import Nemesis, Planned, plan_json, schedule
from harness.gates import gates
from harness.history import evidence
from harness.history.history import Fault, History, Op
from harness.history.resources import Sampler
from harness.load.steady import ANSWER_GRACE_S, Client, LoadSettings, Operations, Steady
from harness.report import plots
from harness.stack.stack import Stack

SETTLE_EXTRA_S = 15.0  # past the op timeout and the manager's result grace, for the sweep to close stragglers


@dataclass(frozen=True)
class SoakSettings:
    nodes: list[str]
    duration_s: float
    warmup_s: float
    sample_interval_s: float
    progress_interval_s: float
    load: LoadSettings
    faults: bool
    seed: int
    fault_interval_s: float
    fault_duration_s: tuple[float, float]
    recovery_timeout_s: float
    probe_interval_s: float
    kinds: list[str]
    alpha: float
    min_samples: int

    @classmethod
    def from_gates(cls, g: gates.Gates) -> SoakSettings:
        def num(key: str) -> float:
            return float(g.setting(f"gates.D.{key}"))

        def whole(key: str) -> int:
            return int(g.setting(f"gates.D.{key}"))

        low, high = g.setting("gates.D.faults.duration_s")
        return cls(
            nodes=[f"n{i}" for i in range(1, whole("nodes") + 1)],
            duration_s=num("soak.duration_s"), warmup_s=num("soak.warmup_s"),
            sample_interval_s=num("soak.sample_interval_s"), progress_interval_s=num("soak.progress_interval_s"),
            load=LoadSettings(num("soak.rate_per_s"), dict(g.setting("gates.D.soak.mix")), num("soak.op_timeout_s"),
                              whole("soak.max_inflight"), whole("soak.chats_per_node")),
            faults=True, seed=whole("faults.seed"), fault_interval_s=num("faults.interval_s"),
            fault_duration_s=(float(low), float(high)), recovery_timeout_s=num("faults.recovery_timeout_s"),
            probe_interval_s=num("faults.probe_interval_s"), kinds=list(g.setting("gates.D.faults.kinds")),
            alpha=num("trend.alpha"), min_samples=whole("trend.min_samples"))

    @classmethod
    def torture(cls, g: gates.Gates) -> SoakSettings:
        """The torture soak (gates.D.torture): the soak's op and sampling settings, its own load, faults and length."""
        def num(key: str) -> float:
            return float(g.setting(f"gates.D.torture.{key}"))

        base = cls.from_gates(g)
        low, high = g.setting("gates.D.torture.fault_duration_s")
        return dataclasses.replace(
            base, duration_s=num("duration_s"), warmup_s=num("warmup_s"), seed=int(g.setting("gates.D.torture.seed")),
            load=dataclasses.replace(base.load, rate_per_s=num("rate_per_s"), mix=dict(g.setting("gates.D.torture.mix"))),
            fault_interval_s=num("interval_s"), fault_duration_s=(float(low), float(high)),
            recovery_timeout_s=num("recovery_timeout_s"), kinds=list(g.setting("gates.D.torture.kinds")))

    @property
    def bot(self) -> bool:
        """Turns through the bot are in the mix, or the bot is a fault's target: the stack needs its bot."""
        return self.load.mix.get("chat", 0) > 0 or any(KINDS[k].target == "bot" for k in self.kinds)

    def plan(self) -> list[Planned]:
        """Faults after the warm-up, and none so late that its recovery could not be seen before the end."""
        if not self.faults:
            return []
        return schedule(self.seed, self.nodes, self.kinds, self.warmup_s, self.duration_s - self.recovery_timeout_s,
                        self.fault_interval_s, self.fault_duration_s)


@dataclass
class SoakRun:
    settings: SoakSettings
    plan: list[Planned]
    summary: Summary
    out_dir: Path
    faults: list[Fault] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stopped_early: bool = False
    still_open: list[str] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)

    @property
    def history_path(self) -> Path:
        return self.out_dir / "history.jsonl"

    def report(self) -> str:
        s = self.settings
        head = [f"soak: {len(s.nodes)} nodes, {s.load.rate_per_s:g} ops/s, seed {s.seed}, "
                f"{len(self.faults)} faults played of {len(self.plan)} planned"
                + (", STOPPED EARLY" if self.stopped_early else "")]
        head += [f"  skipped: {x}" for x in self.skipped]
        if self.still_open:
            head.append(f"  tasks still open after settling: {', '.join(self.still_open[:10])}")
        return "\n".join(head) + "\n" + checkers.report(self.summary)


class Progress:
    """One line every interval: elapsed and remaining, operations, success so far, last fault, current RSS."""

    def __init__(self, say: Callable[[str], None], history: History, sampler: Sampler, nemesis: Nemesis | None,
                 t0: float, until: float) -> None:
        self.say, self.history, self.sampler, self.nemesis, self.t0, self.until = say, history, sampler, nemesis, t0, until

    def line(self) -> str:
        now = time.time()
        load = [o for o in self.history.ops if o.op != "probe"]
        ok = sum(1 for o in load if o.outcome == "ok")
        rss = " ".join(f"{name} {s['rss'] / 2**20:.0f}MB" for name, s in sorted(self.sampler.latest.items()))
        rate = f"{ok / len(load):.2%}" if load else "n/a"
        last = self.nemesis.last if self.nemesis else "faults off"
        return (f"[soak] {_clock(now - self.t0)} elapsed, {_clock(max(0.0, self.until - now))} left | "
                f"ops {len(load)} ok {rate} | last fault: {last} | rss {rss}")

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                self.say(self.line())


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


async def run(stack: Stack, settings: SoakSettings, out_dir: Path, stop: asyncio.Event,
              say: Callable[[str], None] = print) -> SoakRun:
    """Run the soak on a started stack (the nodes are added here), then judge it. `stop` ends it early."""
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    for node in settings.nodes:
        if node not in stack.procs:
            await stack.add_node(node)
    if settings.bot and stack.telegram is None:
        # The bot's turn gets the op's own deadline, as a control op's dispatch does.
        await stack.start_bot(turn_timeout=settings.load.op_timeout_s)
    plan = settings.plan()
    (out_dir / "schedule.json").write_text(json.dumps({"settings": asdict(settings), "plan": plan_json(plan)},
                                                      indent=1, default=str))
    history = History(out_dir / "history.jsonl")
    sampler = Sampler(stack.procs, settings.nodes, settings.sample_interval_s, out_dir / "resources.jsonl")
    rng = random.Random(settings.seed)
    async with aiohttp.ClientSession() as http:
        client = Client(http, stack.manager_url, stack.control_token)
        ops = Operations(client, history, settings.load, f"soak{settings.seed}", stack.telegram)
        steady = Steady(ops, settings.nodes, rng)
        nemesis = Nemesis(stack, history, ops, settings.nodes, settings.recovery_timeout_s, settings.probe_interval_s)
        t0 = time.time()
        until = t0 + settings.duration_s
        say(f"[soak] {settings.duration_s / 60:.1f} min on {', '.join(settings.nodes)} at "
            f"{settings.load.rate_per_s:g} ops/s; {len(plan)} faults planned (seed {settings.seed}); "
            f"history: {history.path}")
        done = asyncio.Event()  # the sampler and progress stop once the load and the faults are over
        background = [asyncio.create_task(sampler.run(done)),
                      asyncio.create_task(Progress(say, history, sampler, nemesis, t0, until)
                                          .run(done, settings.progress_interval_s))]
        faults_task = asyncio.create_task(nemesis.run(plan, t0, stop, until))
        try:
            await steady.run(stop, until)
            await asyncio.wait_for(faults_task, settings.recovery_timeout_s + max(settings.fault_duration_s) + 30)
        except TimeoutError:
            say("[soak] the nemesis did not finish in time; stopping it")
        finally:
            faults_task.cancel()
            await asyncio.gather(faults_task, return_exceptions=True)
            done.set()
            await asyncio.gather(*background)
        say(f"[soak] load over after {_clock(time.time() - t0)}; settling and gathering evidence")
        if stack.procs["manager"].alive:
            await stack.wait_manager(timeout=30)
        open_left = await evidence.settle(client, settings.load.op_timeout_s + ANSWER_GRACE_S + 30 + SETTLE_EXTRA_S)
        ev = await evidence.gather(stack, client, history.ops)
    evidence.save(ev, out_dir / "evidence.json")
    evidence.resolve(history, ev)
    summary = checkers.summarize(history.ops, history.faults, ev, sampler.samples, settings.warmup_s,
                                 settings.alpha, settings.min_samples)
    (out_dir / "checks.json").write_text(json.dumps(summary.to_json(), indent=1, default=str))
    result = SoakRun(settings, plan, summary, out_dir, nemesis.done, nemesis.skipped, stop.is_set(), open_left,
                     history.ops)
    (out_dir / "report.txt").write_text(result.report() + "\n")
    draw(result, history, sampler.samples, t0)
    return result


def draw(run: SoakRun, history: History, samples: list[dict[str, Any]], t0: float) -> list[Path]:
    return [plots.latency(history.ops, history.faults, t0, run.out_dir / "latency.png"),
            plots.resources(samples, run.summary, t0, run.settings.warmup_s, run.out_dir / "resources.png"),
            plots.errors(run.summary, run.out_dir / "errors.png")]


# ---- the soak as a command: `harness soak`, `harness check` -------------------------------------

def criteria(g: gates.Gates, summary: Summary) -> list[gates.Criterion]:
    """One criterion per soak threshold in gates.yaml, judged on this run's figures."""
    return gates.judge(g, "soak", gates.measure(g, "soak", summary.metric))


async def main(g: gates.Gates, settings: SoakSettings, run_dir: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        if stop.is_set():  # a second Ctrl-C: stop waiting, tear down at once
            raise KeyboardInterrupt
        print("\n[soak] stopping: finishing in-flight ops, then judging what ran (Ctrl-C again to abort)", flush=True)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted)
    stack = Stack(run_dir / "stack")
    started = time.monotonic()
    try:
        await stack.start()
        result = await run(stack, settings, run_dir, stop, lambda line: print(line, flush=True))
    finally:
        await stack.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return conclude(g, result, time.monotonic() - started)


def conclude(g: gates.Gates, result: SoakRun, seconds: float) -> int:
    verdict = gates.Verdict("D", False, criteria(g, result.summary), 1, round(seconds, 1))
    verdict.passed = all(c.passed for c in verdict.criteria) and not result.stopped_early
    if result.stopped_early:
        verdict.criteria.append(gates.Criterion("the soak ran its full duration", False, "stopped early (Ctrl-C)"))
    out = result.out_dir
    (out / "verdict.json").write_text(json.dumps(verdict.to_json(), indent=2))
    print("\n" + result.report())
    print(f"\ngate D (soak, profile {g.profile}):\n{gates.table([verdict])}")
    for c in verdict.criteria:
        print(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}")
    index = _allure(out, g.profile, verdict, result)
    print(f"\nhistory: {result.history_path}\nfigures: {out}/*.png\nverdict: {out / 'verdict.json'}"
          + (f"\nreport:  {index}" if index else ""))
    return 0 if verdict.passed else 1


def _allure(out: Path, profile: str, verdict: gates.Verdict, result: SoakRun) -> Path | None:
    """The gate verdict as a result with a step per threshold, and the soak's evidence as attachments."""
    from harness.report import allure as report

    results = out / "allure-results"
    results.mkdir(exist_ok=True)
    files = [("latency over time", "latency.png", "image/png"), ("resources", "resources.png", "image/png"),
             ("errors by kind", "errors.png", "image/png"), ("history", "history.jsonl", "text/plain"),
             ("resource samples", "resources.jsonl", "text/plain"), ("checker verdicts", "checks.json", "application/json"),
             ("fault schedule", "schedule.json", "application/json"), ("figures", "report.txt", "text/plain")]
    attachments = []
    for name, file, mime in files:
        if (out / file).exists():
            source = f"{uuid.uuid4()}-attachment{Path(file).suffix}"
            shutil.copyfile(out / file, results / source)
            attachments.append({"name": name, "source": source, "type": mime})
    now = int(time.time() * 1000)
    (results / f"{uuid.uuid4()}-result.json").write_text(json.dumps({
        "uuid": str(uuid.uuid4()), "name": "D soak", "fullName": "soak.D", "historyId": "soak-D",
        "testCaseId": "soak-D", "status": "passed" if verdict.passed else "failed", "stage": "finished",
        "start": int(result.summary.started * 1000) or now, "stop": now,
        "description": f"```\n{result.report()}\n```", "attachments": attachments,
        "labels": [{"name": "parentSuite", "value": "D"}, {"name": "suite", "value": "soak"}]}))
    try:
        report.write_environment(results, profile)
        report.write_gate_results(results, [verdict.to_json()])
        return report.generate(results, out / "allure-report", f"Codex Relay soak {out.name}")
    except (RuntimeError, OSError) as exc:
        print(f"harness: the Allure report was not generated: {exc}")
        return None


def recheck(g: gates.Gates, run_dir: Path) -> int:
    """The checkers again over a recorded soak: same files in, same figures out."""
    from harness.history import history as hist
    from harness.history import resources

    if not (run_dir / "schedule.json").exists() and (run_dir / "D-soak" / "schedule.json").exists():
        run_dir = run_dir / "D-soak"  # a gate run keeps its soak in a folder of its own
    if not (run_dir / "schedule.json").exists():
        print(f"harness check: {run_dir} is not a soak's folder (no schedule.json): pass reports/<run> of "
              "`harness soak`, or of `harness gate D`", file=sys.stderr)
        return 2
    saved = json.loads((run_dir / "schedule.json").read_text())["settings"]
    records = hist.load(run_dir / "history.jsonl")
    ops, faults, _ = hist.split(records)
    ev = evidence.load(run_dir / "evidence.json") if (run_dir / "evidence.json").exists() else None
    summary = checkers.summarize(ops, faults, ev, resources.load(run_dir / "resources.jsonl"), saved["warmup_s"],
                                 saved["alpha"], saved["min_samples"])
    print(checkers.report(summary))
    # A torture run (harness torture, R-06) is judged by its own thresholds: it has no steady state for the rest.
    section = "torture" if (run_dir / "torture.json").exists() else "soak"
    verdict = gates.judge(g, section, gates.measure(g, section, summary.metric))
    for c in verdict:
        print(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}: {c.detail}")
    return 0 if all(c.passed for c in verdict) else 1
