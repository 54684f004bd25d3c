"""Checkers: pure functions that judge a whole history after the run, Jepsen style.

Input is the history (ops, fault windows), the evidence gathered after recovery (the mock model's
serve count per prompt, the manager's DB row and `task_final` log lines per task) and the resource
samples. Output is plain data; gates.yaml's thresholds judge it. Nothing here touches a process,
so a recorded run, or a synthetic one, can be judged again offline.
"""
from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.checkers.shown import Shown, classify
from harness.history.history import Fault, Op

FINAL = ("done", "failed", "cancelled")  # cancelled: the user stopped it, final and not a failure
CHAT_OPS = ("chat", "chat_probe")  # turns sent through Telegram and the bot (harness/load/steady.py)
CHAT_UNANSWERED = "the chat showed no outcome in time"  # the detail of a chat op whose message got no answer
EXAMPLES = 10  # violations listed by id; the counts hold the rest
DROP_SLACK_S = 1.0  # a result in flight when the manager's own timeout fired is a race, not a drop


@dataclass
class Evidence:
    serves: dict[str, int] = field(default_factory=dict)           # prompt key -> times the model was asked
    # task_id -> {state, error_kind, text}; a task the manager never stored is absent
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    finals: dict[str, int] = field(default_factory=dict)           # task_id -> `op=task_final` lines in the manager's log
    node_ok: dict[str, float] = field(default_factory=dict)        # task_id -> when a node logged it finished ok
    # Chat ops, by chat id: the bot's messages in the chat as the user sees them now, and the task ids the
    # bot logged for turns it started there (more than one: it took the same message twice).
    chats: dict[str, list[str]] = field(default_factory=dict)
    chat_tasks: dict[str, list[str]] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), or None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# ---- fault windows, recovery and the steady state ----------------------------------------------

def uses_path(op: Op, fault: Fault) -> bool:
    """Does the op go through what the fault broke? Upstream faults hurt only ops that reach the model, bot
    faults only the turns sent through the bot."""
    if fault.target == "bot":
        return op.op in CHAT_OPS
    if fault.scope not in ("all", op.node):
        return False
    return op.prompt is not None if fault.target == "upstream" else True


@dataclass
class Recovery:
    fault: str
    target: str
    start: float
    end: float
    rto_s: float | None   # fault end -> the first ok op through its path that started after it; None: never
    by_op: str | None


def recoveries(ops: list[Op], faults: list[Fault]) -> list[Recovery]:
    """A fault that hurt every node has recovered when every node has answered ok again: the slowest counts."""
    nodes = sorted({o.node for o in ops})
    out = []
    for f in faults:
        firsts: list[Op | None] = []
        for node in nodes if f.scope == "all" else [f.scope]:
            after = [o for o in ops if o.node == node and o.outcome == "ok" and o.end is not None
                     and o.start >= f.end and uses_path(o, f)]
            firsts.append(min(after, key=lambda o: o.end or math.inf, default=None))
        answered = [o for o in firsts if o is not None]
        # Recovered only when every node in scope answered ok: one that never did leaves the fault unrecovered.
        last = max(answered, key=lambda o: o.end or math.inf) if answered and len(answered) == len(firsts) else None
        out.append(Recovery(f.fault, f.target, f.start, f.end,
                            None if last is None or last.end is None else round(last.end - f.end, 3),
                            last.op_id if last else None))
    return out


def disturbed(op: Op, faults: list[Fault], recovered: list[Recovery], horizon: float) -> bool:
    """An op overlapping a fault window or the recovery after it, on its path, is not steady state."""
    op_end = op.end if op.end is not None else horizon
    for f, r in zip(faults, recovered, strict=True):
        until = f.end + r.rto_s if r.rto_s is not None else horizon
        if uses_path(op, f) and op.start < until and op_end > f.start:
            return True
    return False


# ---- success, latency, errors ------------------------------------------------------------------

@dataclass
class Rates:
    ops: int
    ok: int
    fail: int
    unknown: int

    @property
    def rate(self) -> float | None:
        return self.ok / self.ops if self.ops else None


def rates(ops: list[Op]) -> Rates:
    c = Counter(o.outcome for o in ops)
    return Rates(len(ops), c["ok"], c["fail"], c["unknown"])


def latencies_ms(ops: list[Op]) -> list[float]:
    """Answered ops only: an unknown has no latency, it has a timeout."""
    return [o.latency_ms for o in ops if o.outcome != "unknown" and o.latency_ms is not None]


def error_kinds(ops: list[Op]) -> dict[str, int]:
    c = Counter(o.error_kind or "unclassified" for o in ops if o.outcome == "fail")
    c.update("unknown" for o in ops if o.outcome == "unknown")
    return dict(c.most_common())


# ---- exactly once ------------------------------------------------------------------------------

@dataclass
class ExactlyOnce:
    tasks: int = 0             # ops that carried a task_id
    acknowledged: int = 0      # ... that the manager stored
    final: int = 0             # ... that reached done or failed
    duplicates: int = 0        # asked of the model more than once, or finalised more than once
    lost: int = 0              # acknowledged (or answered ok) with no final state
    unrecorded: int = 0        # the model was asked, yet the manager has no such task
    inconsistent: int = 0      # the client's answer and the DB disagree, or done without a model call
    dropped: int = 0           # a node finished it ok, yet the manager later failed it: the result never arrived
    # Turns through the bot, for information: a message sent that the chat never answered at all, nor the manager
    # stored (the bot died holding it; Telegram had handed it over), and placeholders left ⏳ beside the outcome
    # (a bot restarted mid-turn sends the answer anew; the old process's placeholder is nobody's to edit).
    unanswered: int = 0
    stale_placeholders: int = 0
    unknown: dict[str, int] = field(default_factory=dict)  # unknown ops by what the DB says they became
    examples: list[str] = field(default_factory=list)


def exactly_once(ops: list[Op], ev: Evidence) -> ExactlyOnce:
    r = ExactlyOnce()
    unknown: Counter[str] = Counter()

    def bad(what: str, op: Op, why: str) -> None:
        setattr(r, what, getattr(r, what) + 1)
        if len(r.examples) < EXAMPLES:
            r.examples.append(f"{what}: {op.op} {op.task_id or op.op_id} on {op.node}: {why}")

    for op in ops:
        if op.op in CHAT_OPS and op.chat_id is not None:
            _chat_once(op, ev, r, bad, unknown)
            continue
        if op.task_id is None:
            continue
        r.tasks += 1
        row = ev.tasks.get(op.task_id)
        served = ev.serves.get(op.prompt or "", 0)
        finals = ev.finals.get(op.task_id, 0)
        state = row["state"] if row else "absent"
        if op.outcome == "unknown":
            unknown[state] += 1
        if served > 1 or finals > 1:
            bad("duplicates", op, f"model asked {served}x, {finals} final states logged")
        if row is None:
            if served:
                bad("unrecorded", op, f"the model was asked {served}x but the manager has no such task")
            elif op.outcome == "ok":
                bad("lost", op, "answered ok but the manager has no such task")
            continue
        r.acknowledged += 1
        if state not in FINAL:
            bad("lost", op, f"still {state} after recovery")
            continue
        r.final += 1
        if op.outcome == "ok" and state != "done":
            bad("inconsistent", op, f"the client was told ok, the DB says {state} {row.get('error_kind')}")
        elif op.outcome == "fail" and state == "done":
            bad("inconsistent", op, f"the client was told {op.error_kind}, the DB says done")
        elif state == "done" and served == 0:
            bad("inconsistent", op, "done without the model ever being asked")
        node_ok = ev.node_ok.get(op.task_id)
        if state == "failed" and node_ok is not None and float(row.get("at") or 0) > node_ok + DROP_SLACK_S:
            bad("dropped", op, f"node finished ok {float(row['at']) - node_ok:.1f}s before the manager failed it "
                               f"as {row.get('error_kind')}")
    r.unknown = dict(unknown)
    return r


def _chat_once(op: Op, ev: Evidence, r: ExactlyOnce, bad: Callable[[str, Op, str], None],
               unknown: Counter[str]) -> None:
    """A turn through the bot: the manager's record as for any task, and what its chat showed: the outcome exactly
    once. A placeholder the bot showed is an acknowledgement too, so one left without an outcome is a loss."""
    key = str(op.chat_id)
    task_ids = ev.chat_tasks.get(key, [])
    rows = [(t, ev.tasks[t]) for t in task_ids if t in ev.tasks]
    seen: Shown = classify(ev.chats.get(key, []), op.prompt or "")
    served = ev.serves.get(op.prompt or "", 0)
    finals = max((ev.finals.get(t, 0) for t in task_ids), default=0)
    state = rows[0][1]["state"] if rows else "absent"
    if op.outcome == "unknown":
        unknown[state] += 1
    if not task_ids and served == 0 and seen.finals == 0 and seen.working == 0:
        if op.detail == CHAT_UNANSWERED:
            r.unanswered += 1
        if op.outcome != "unknown":
            return  # failed before reaching the bot (the node could not be selected): no turn, nothing to account for
    r.tasks += 1
    if seen.finals and seen.working:
        r.stale_placeholders += 1
    if served > 1 or len(task_ids) > 1 or finals > 1 or seen.finals > 1:
        bad("duplicates", op, f"model asked {served}x, {len(task_ids)} turns started by the bot, a task finalised "
                              f"{finals}x, {seen.finals} outcomes shown in chat {key}")
    if not rows:
        if served:
            bad("unrecorded", op, f"the model was asked {served}x but the manager has no such task")
        elif seen.working and not seen.finals:
            bad("lost", op, f"the bot showed a placeholder in chat {key}, yet the turn never reached the manager")
        elif op.outcome == "ok":
            bad("lost", op, "answered ok but the manager has no such task")
        return
    task_id, row = rows[0]
    r.acknowledged += 1
    if state not in FINAL:
        bad("lost", op, f"{task_id} still {state} after recovery")
        return
    r.final += 1
    if seen.finals == 0:
        bad("lost", op, f"{task_id} is {state} in the manager, but chat {key} never showed an outcome")
    elif state == "done" and not seen.answers:
        bad("inconsistent", op, f"{task_id} is done, chat {key} showed only {seen.failures}")
    elif state == "failed" and seen.answers:
        bad("inconsistent", op, f"{task_id} failed as {row.get('error_kind')}, chat {key} showed the answer")
    elif state == "done" and served == 0:
        bad("inconsistent", op, f"{task_id} done without the model ever being asked")
    node_ok = ev.node_ok.get(task_id)
    if state == "failed" and node_ok is not None and float(row.get("at") or 0) > node_ok + DROP_SLACK_S:
        bad("dropped", op, f"node finished ok {float(row['at']) - node_ok:.1f}s before the manager failed it "
                           f"as {row.get('error_kind')}")


# ---- resource trends ---------------------------------------------------------------------------

METRICS = {"rss": "rss_slope", "fds": "fd_slope", "threads": "threads_slope"}


def recycled(process: str) -> bool:
    """A codex child lives only until its node restarts it past its bounds (runtime/node/tasks.py): its lives are
    short by design, so its memory is judged by its peak, and slopes judge the long-lived processes."""
    return process.endswith("/codex")


def codex_peaks(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Each node's codex children's highest RSS, in MB, over all their lives."""
    peaks: dict[str, float] = {}
    for s in samples:
        if recycled(s["process"]) and s.get("rss") is not None:
            peaks[s["process"]] = max(peaks.get(s["process"], 0.0), float(s["rss"]) / 2**20)
    return peaks


@dataclass
class Trend:
    process: str        # manager, n1, n1/codex, bot
    pid: int
    metric: str         # rss, fds, threads
    samples: int
    median: float
    slope_per_h: float  # Sen's slope, in the metric's unit per hour
    slope_pct_per_h: float
    p: float | None
    # A significant upward trend: Mann-Kendall on the pre-whitened series (Yue & Wang), because memory
    # samples are strongly autocorrelated and the plain test would see a trend in every wander.
    increasing: bool
    judged: bool
    note: str = ""

    def leak(self, per_hour: str = "%/h") -> float:
        """What a threshold judges: the slope of a significant upward trend (relative, or in MB or counts), else 0."""
        if not (self.judged and self.increasing and self.slope_per_h > 0):
            return 0.0
        if per_hour == "%/h":
            return self.slope_pct_per_h
        return self.slope_per_h / 2**20 if self.metric == "rss" else self.slope_per_h

    def slope_text(self) -> str:
        if self.metric == "rss":
            return f"{self.slope_per_h / 2**20:+.2f}MB/h ({self.slope_pct_per_h:+.2f}%/h)"
        return f"{self.slope_per_h:+.2f}/h ({self.slope_pct_per_h:+.2f}%/h)"

    def line(self) -> str:
        median = f"{self.median / 2**20:.1f}MB" if self.metric == "rss" else f"{self.median:g}"
        p = "n/a" if self.p is None else f"{self.p:.3f}"
        verdict = ("LEAK TREND" if self.leak() else "no trend") if self.judged else f"not judged: {self.note}"
        return (f"{self.process:<12} pid {self.pid:<7} {self.metric:<7} n={self.samples:<5} median {median:>8}  "
                f"slope {self.slope_text():<28} p={p:<6} {verdict}")


def trends(samples: list[dict[str, Any]], warmup_s: float, alpha: float, min_samples: int) -> list[Trend]:
    """One trend per process life (a restart starts a new series) and metric, judged after its own warm-up."""
    lives: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for s in samples:
        lives.setdefault((s["process"], s["pid"]), []).append(s)
    out = []
    for (process, pid), series in sorted(lives.items()):
        series.sort(key=lambda s: s["t"])
        settled = [s for s in series if s["t"] >= series[0]["t"] + warmup_s]
        for metric in METRICS:
            values = [float(s[metric]) for s in settled if s.get(metric) is not None]
            out.append(_trend(process, pid, metric, [s["t"] for s in settled][:len(values)], values, alpha,
                              min_samples))
    return out


def _trend(process: str, pid: int, metric: str, ts: list[float], ys: list[float], alpha: float,
           min_samples: int) -> Trend:
    median = percentile(ys, 50) or 0.0
    if len(ys) < min_samples:
        return Trend(process, pid, metric, len(ys), median, 0.0, 0.0, None, False, False,
                     f"{len(ys)} samples after warm-up, fewer than {min_samples}")
    hours = (ts[-1] - ts[0]) / 3600
    if len(set(ys)) == 1:
        return Trend(process, pid, metric, len(ys), median, 0.0, 0.0, 1.0, False, True, "constant")
    import pymannkendall  # numpy and scipy load only when there is a series to judge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a nearly constant series makes its lag-variance 0
        res = pymannkendall.pre_whitening_modification_test(ys, alpha=alpha)
    per_sample = float(res.slope)
    per_h = per_sample * (len(ys) - 1) / hours if hours > 0 else 0.0
    pct = per_h / median * 100 if median else 0.0
    p = None if math.isnan(res.p) else float(res.p)
    increasing = res.trend == "increasing" and p is not None and p < alpha
    return Trend(process, pid, metric, len(ys), median, per_h, pct, p, increasing, True)


# ---- the whole run -----------------------------------------------------------------------------

@dataclass
class Summary:
    """Everything the checkers found; `metric` answers a threshold's left-hand side."""
    all: Rates
    steady: Rates
    latency_ms: dict[str, float | None]
    latency_steady_ms: list[float]
    errors: dict[str, int]
    errors_steady: dict[str, int]
    recoveries: list[Recovery]
    exactly_once: ExactlyOnce | None
    trends: list[Trend]
    codex_peak_mb: dict[str, float]
    started: float
    ended: float

    def metric(self, name: str, q: float | None = None, per_hour: str = "%/h") -> tuple[float | None, str]:
        """(value, how it was measured) for a threshold's metric; None when the run gave nothing to measure."""
        if name == "p":
            assert q is not None
            return percentile(self.latency_steady_ms, q), f"over {len(self.latency_steady_ms)} steady answered ops"
        if name == "rto p":
            assert q is not None
            rtos = [math.inf if r.rto_s is None else r.rto_s * 1000 for r in self.recoveries]
            never = sum(1 for r in self.recoveries if r.rto_s is None)
            return percentile(rtos, q), f"over {len(rtos)} faults" + (f", {never} never recovered" if never else "")
        if name == "rto max":
            rtos = [math.inf if r.rto_s is None else r.rto_s * 1000 for r in self.recoveries]
            return max(rtos, default=None), f"over {len(rtos)} faults"
        if name == "rate":
            s = self.steady
            return s.rate, f"{s.ok}/{s.ops} steady ops ok (overall {self.all.ok}/{self.all.ops})"
        if name == "rate_all":
            return self.all.rate, f"{self.all.ok}/{self.all.ops} ops ok"
        if name in ("duplicates", "lost", "dropped"):
            if self.exactly_once is None:
                return None, "no evidence was gathered"
            eo = self.exactly_once
            value = {"duplicates": eo.duplicates + eo.unrecorded, "lost": eo.lost, "dropped": eo.dropped}[name]
            return float(value), f"over {eo.tasks} tasks, {eo.acknowledged} acknowledged"
        if name == "codex_rss_peak":
            if not self.codex_peak_mb:
                return None, "no codex child was sampled"
            highest = max(self.codex_peak_mb, key=lambda k: self.codex_peak_mb[k])
            return self.codex_peak_mb[highest], f"highest: {highest}; " + ", ".join(
                f"{k} {v:.0f} MB" for k, v in sorted(self.codex_peak_mb.items()))
        for metric, slope in METRICS.items():
            if name == slope:
                judged = [t for t in self.trends if t.metric == metric and t.judged and not recycled(t.process)]
                if not judged:
                    return None, "no process lived long enough after warm-up to judge"
                worst = max(judged, key=lambda t: (t.leak(per_hour), t.slope_pct_per_h))
                p = "n/a" if worst.p is None else f"{worst.p:.3f}"
                return worst.leak(per_hour), (f"worst {worst.process} pid {worst.pid}: {worst.slope_text()}, p={p}, "
                                              f"{'a' if worst.leak() else 'no'} significant upward trend;"
                                              f" {len(judged)} series judged")
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("latency_steady_ms")
        out["all"]["rate"], out["steady"]["rate"] = self.all.rate, self.steady.rate
        return out


def summarize(ops: list[Op], faults: list[Fault], evidence: Evidence | None, samples: list[dict[str, Any]],
              warmup_s: float, alpha: float, min_samples: int) -> Summary:
    """Probes measure recovery; they are not the load, so rates and latency leave them out. Resources are
    judged while the load ran: the evidence gathering after it opens connections of its own."""
    started = min((o.start for o in ops), default=0.0)
    ended = max((o.end or o.start for o in ops), default=0.0)
    horizon = max([ended] + [f.end for f in faults])
    recovered = recoveries(ops, faults)
    load = [o for o in ops if o.op != "probe"]
    steady = [o for o in load if not disturbed(o, faults, recovered, horizon)]
    lat = latencies_ms(load)
    steady_lat = latencies_ms(steady)
    return Summary(
        all=rates(load), steady=rates(steady),
        latency_ms={"p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
                    "steady_p50": percentile(steady_lat, 50), "steady_p95": percentile(steady_lat, 95),
                    "steady_p99": percentile(steady_lat, 99)},
        latency_steady_ms=steady_lat,
        errors=error_kinds(load), errors_steady=error_kinds(steady), recoveries=recovered,
        exactly_once=None if evidence is None else exactly_once(ops, evidence),
        trends=trends([x for x in samples if x["t"] <= ended], warmup_s, alpha, min_samples),
        codex_peak_mb=codex_peaks([x for x in samples if x["t"] <= ended]), started=started, ended=ended)


def report(s: Summary) -> str:
    """The figures as the terminal shows them."""
    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f} ms"

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2%}"

    rtos = [r.rto_s for r in s.recoveries]
    known = [r for r in rtos if r is not None]
    lines = [
        f"operations:   {s.all.ops} (ok {s.all.ok}, fail {s.all.fail}, unknown {s.all.unknown}) "
        f"over {(s.ended - s.started) / 60:.1f} min",
        f"success rate: {pct(s.all.rate)} overall; {pct(s.steady.rate)} outside fault windows "
        f"({s.steady.ok}/{s.steady.ops})",
        f"latency:      P50 {ms(s.latency_ms['p50'])}, P95 {ms(s.latency_ms['p95'])}, P99 {ms(s.latency_ms['p99'])}"
        f" overall; steady P50 {ms(s.latency_ms['steady_p50'])}, P95 {ms(s.latency_ms['steady_p95'])}, "
        f"P99 {ms(s.latency_ms['steady_p99'])}",
        f"errors:       {s.errors or 'none'} (steady: {s.errors_steady or 'none'})",
        f"faults:       {len(rtos)}, RTO P50 {_s(percentile(known, 50))}, P95 "
        f"{_s(percentile([math.inf if r is None else r for r in rtos], 95))}, max {_s(max(known, default=None))}, "
        f"never recovered {rtos.count(None)}",
    ]
    by_kind: dict[str, list[float | None]] = {}
    for r in s.recoveries:
        by_kind.setdefault(r.fault, []).append(r.rto_s)
    lines += [f"  {kind:<14} x{len(v):<3} RTO max {_s(max((x for x in v if x is not None), default=None))}"
              + (f", {v.count(None)} never recovered" if None in v else "") for kind, v in sorted(by_kind.items())]
    if s.exactly_once is not None:
        eo = s.exactly_once
        lines.append(f"exactly-once: {eo.tasks} tasks, {eo.acknowledged} acknowledged, {eo.final} final; "
                     f"duplicates found {eo.duplicates}, unrecorded {eo.unrecorded}, lost {eo.lost}, "
                     f"dropped results {eo.dropped}, inconsistent {eo.inconsistent}; "
                     f"unknown resolved as {eo.unknown or 'none'}"
                     + (f"; through the bot: {eo.unanswered} messages never answered, {eo.stale_placeholders} "
                        "placeholders left beside their outcome" if eo.unanswered or eo.stale_placeholders else ""))
        lines += [f"  {e}" for e in eo.examples]
    lines.append("resource trends (slope per hour, after warm-up, per process life; codex children for "
                 "information, judged by their peak):")
    lines += [f"  {t.line()}" for t in s.trends]
    lines.append("codex children's peak RSS: " + (", ".join(f"{k} {v:.0f} MB" for k, v in sorted(
        s.codex_peak_mb.items())) or "none sampled"))
    return "\n".join(lines)


def _s(v: float | None) -> str:
    return "n/a" if v is None else ("inf" if math.isinf(v) else f"{v:.2f} s")
