"""The checkers judge recorded histories: a duplicating or leaking build must be caught, a sound one passed.

The histories here are synthetic but shaped like a soak's (history.jsonl, evidence.json, resources.jsonl),
and go through the same files, checkers and gates.yaml thresholds as a real run.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from harness.checkers import checkers
from harness.checkers.checkers import Evidence
from harness.gates import gates
from harness.history import evidence, history
from harness.history.history import Fault, History, Op

T0 = 1_800_000_000.0
NODES = ("n1", "n2")


def soak_history(path: Path, n: int = 400, faults: tuple[Fault, ...] = ()) -> tuple[list[Op], Evidence]:
    """A clean run: one turn a second round-robin over two nodes, each stored, done, and served once."""
    h = History(path)
    ev = Evidence()
    for i in range(n):
        start = T0 + i
        op = Op(f"op{i}", "dispatch_text", NODES[i % 2], start, start + 0.2, "ok", task_id=f"task{i}",
                prompt=f"turn {i}", trace_id=f"tr{i}")
        h.add(op)
        ev.tasks[op.task_id] = {"state": "done", "error_kind": None, "text": f"mock reply: turn {i}"}  # type: ignore[index]
        ev.serves[f"turn {i}"] = 1
        ev.finals[f"task{i}"] = 1
    for f in faults:
        h.add(f)
    return h.ops, ev


def judge(g: gates.Gates, ops: list[Op], fs: list[Fault], ev: Evidence,
          samples: list[dict[str, object]] | None = None) -> dict[str, gates.Criterion]:
    summary = checkers.summarize(ops, fs, ev, samples or [], 60, 0.05, 20)
    return {c.name.split(": ", 1)[1]: c for c in gates.judge(g, "soak", gates.measure(g, "soak", summary.metric))}


@pytest.fixture(scope="module")
def g() -> gates.Gates:
    return gates.load("full")


def test_a_sound_run_passes_exactly_once(tmp_path: Path, g: gates.Gates) -> None:
    ops, ev = soak_history(tmp_path / "history.jsonl")
    verdict = judge(g, ops, [], ev)
    assert verdict["duplicates == 0"].passed and verdict["lost == 0"].passed
    assert verdict["rate >= 0.995"].passed and verdict["p(95) < 1500"].passed


def test_a_duplicating_build_is_caught(tmp_path: Path, g: gates.Gates) -> None:
    """One turn asked of the model twice, another finalised twice: both are duplicates, and the gate fails."""
    ops, ev = soak_history(tmp_path / "history.jsonl")
    ev.serves["turn 17"] = 2
    ev.finals["task42"] = 2
    # Round-trip through the files a run leaves, as `harness check` reads them.
    evidence.save(ev, tmp_path / "evidence.json")
    ops, fs, _ = history.split(history.load(tmp_path / "history.jsonl"))
    once = checkers.exactly_once(ops, evidence.load(tmp_path / "evidence.json"))
    assert once.duplicates == 2 and any("task17" in e for e in once.examples)
    verdict = judge(g, ops, fs, evidence.load(tmp_path / "evidence.json"))
    assert not verdict["duplicates == 0"].passed
    assert "duplicates = 2" in verdict["duplicates == 0"].detail


def test_lost_unrecorded_and_inconsistent_tasks_are_caught(tmp_path: Path, g: gates.Gates) -> None:
    ops, ev = soak_history(tmp_path / "history.jsonl")
    ev.tasks["task3"]["state"] = "running"              # acknowledged, never final
    del ev.tasks["task5"]                               # answered ok, yet the manager has no such task (served once)
    ev.tasks["task8"]["state"] = "failed"               # the client was told ok
    once = checkers.exactly_once(ops, ev)
    assert (once.lost, once.unrecorded, once.inconsistent) == (1, 1, 1), once.examples
    assert not judge(g, ops, [], ev)["lost == 0"].passed


def test_unknown_ops_are_resolved_from_the_db(tmp_path: Path) -> None:
    """A timeout's real outcome comes from the DB after recovery; one the model ran but nobody stored is caught."""
    ops, ev = soak_history(tmp_path / "history.jsonl", n=4)
    ops[0].outcome = ops[1].outcome = ops[2].outcome = "unknown"
    ev.tasks["task1"]["state"] = "failed"
    del ev.tasks["task2"]                               # absent, but the model was asked: executed without a record
    once = checkers.exactly_once(ops, ev)
    assert once.unknown == {"done": 1, "failed": 1, "absent": 1}
    assert once.unrecorded == 1 and once.lost == 0
    h = History(tmp_path / "resolved.jsonl")
    for op in ops:
        h.add(op)
    evidence.resolve(h, ev)
    resolved = history.split(history.load(h.path))[2]
    assert {r.state for r in resolved.values()} == {"done", "failed", "absent"}


def test_rto_and_the_steady_state(tmp_path: Path, g: gates.Gates) -> None:
    """Ops in a fault window or its recovery, on the fault's path, leave the steady rate; the RTO is measured."""
    node_kill = Fault("node_kill", "n1", "n1", T0 + 100, T0 + 105)
    manager_kill = Fault("manager_kill", "manager", "all", T0 + 200, T0 + 203)
    ops, ev = soak_history(tmp_path / "history.jsonl", faults=(node_kill, manager_kill))
    for op in ops:  # n1 fails until 2 s after its fault; everything fails until 4 s after the manager's
        if op.node == "n1" and T0 + 100 <= op.start < T0 + 107 or T0 + 200 <= op.start < T0 + 207:
            op.outcome, op.error_kind = "fail", "node_offline"
    s = checkers.summarize(ops, [node_kill, manager_kill], ev, [], 60, 0.05, 20)
    rto = {r.fault: r.rto_s for r in s.recoveries}
    assert rto["node_kill"] == pytest.approx(3.2, abs=0.01)  # n1 runs the even ops: its first ok starts at +108
    assert rto["manager_kill"] == pytest.approx(5.2, abs=0.01)  # every node must be back: n2's first is at +208
    assert s.steady.fail == 0 and s.all.fail > 0
    verdict = judge(g, ops, [node_kill, manager_kill], ev)
    assert verdict["rate >= 0.995"].passed
    assert not verdict["rto p(95) < 5s"].passed


def _series(process: str, pid: int, hours: float, interval_s: float, base_mb: float, pct_per_h: float,
            rng: random.Random) -> list[dict[str, object]]:
    """An RSS series with autocorrelated noise (AR(1)), like a process's real memory, and an optional leak."""
    out, noise = [], 0.0
    for i in range(int(hours * 3600 / interval_s)):
        t = i * interval_s
        noise = 0.9 * noise + rng.gauss(0, 0.3)
        rss = (base_mb * (1 + pct_per_h / 100 * t / 3600) + noise) * 2**20
        out.append({"t": T0 + t, "process": process, "pid": pid, "rss": rss, "fds": 20, "threads": 2})
    return out


def test_a_leaking_build_is_caught_and_a_flat_one_is_not(g: gates.Gates) -> None:
    rng = random.Random(7)
    samples = (_series("manager", 10, 2, 5, 40, 5.0, rng) + _series("n1", 11, 2, 5, 35, 0.0, rng)
               + _series("n1/codex", 12, 2, 5, 160, 5.0, rng))  # the manager leaks 5% an hour, and codex grows
    trends = {(t.process, t.metric): t for t in checkers.trends(samples, 300, 0.05, 20)}
    leak = trends[("manager", "rss")]
    assert leak.increasing and leak.slope_pct_per_h == pytest.approx(5.0, rel=0.15), leak.line()
    assert not trends[("n1", "rss")].leak() and trends[("n1/codex", "rss")].leak()
    assert trends[("manager", "fds")].note == "constant"
    ops, ev = soak_history(Path("/dev/null"), n=7200)  # the load spans the samples: resources are judged under load
    verdict = judge(g, ops, [], ev, samples)
    # The manager is long-lived: its slope is judged. A codex child is recycled by its node: its peak is.
    assert not verdict["rss_slope < 2%/h"].passed and "manager" in verdict["rss_slope < 2%/h"].detail
    assert verdict["fd_slope < 15/h"].passed
    assert verdict["codex_rss_peak < 1100MB"].passed, verdict["codex_rss_peak < 1100MB"].detail
    swollen = samples + _series("n2/codex", 13, 0.5, 5, 1150, 0.0, rng)
    verdict = judge(g, ops, [], ev, swollen)
    assert not verdict["codex_rss_peak < 1100MB"].passed and "n2/codex" in verdict["codex_rss_peak < 1100MB"].detail


def test_a_restart_starts_a_new_series() -> None:
    """A killed and restarted process drops its memory: each life is judged on its own, never as one line."""
    rng = random.Random(3)
    first, second = _series("manager", 10, 2, 5, 40, 0.0, rng), _series("manager", 20, 2, 5, 30, 0.0, rng)
    for s in second:
        s["t"] = float(s["t"]) + 7200  # type: ignore[arg-type]
    trends = [t for t in checkers.trends(first + second, 60, 0.05, 20) if t.metric == "rss"]
    assert [t.pid for t in trends] == [10, 20] and not any(t.leak() for t in trends)


def test_percentiles_match_the_usual_definition() -> None:
    assert checkers.percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    assert checkers.percentile([], 95) is None


# ---- thresholds as expressions -----------------------------------------------------------------

@pytest.mark.parametrize(("expr", "metric", "q", "op", "limit"), [
    ("p(95) < 1500", "p", 95, "<", 1500), ("p(99)<2s", "p", 99, "<", 2000), ("rate >= 0.995", "rate", None, ">=", 0.995),
    ("rate >= 99.5%", "rate", None, ">=", 0.995), ("rto p(95) < 5s", "rto p", 95, "<", 5000),
    ("rto max <= 30s", "rto max", None, "<=", 30000), ("rss_slope < 2%/h", "rss_slope", None, "<", 2.0),
    ("rss_slope < 5MB/h", "rss_slope", None, "<", 5.0), ("fd_slope < 15/h", "fd_slope", None, "<", 15.0),
    ("duplicates == 0", "duplicates", None, "==", 0)])
def test_threshold_expressions_parse(expr: str, metric: str, q: float | None, op: str, limit: float) -> None:
    t = gates.parse_threshold("gates.D.thresholds.soak.x", expr)
    assert (t.metric, t.q, t.op, t.limit) == (metric, q, op, pytest.approx(limit))


@pytest.mark.parametrize(("expr", "says"), [
    ("p95 < 1500", "unknown metric"), ("p(95) <", "is not a threshold"), ("rss_slope < 2", "a slope per hour"),
    ("fd_slope < 2MB/h", "%/h or /h"),
    ("rate >= 1.5", "between 0 and 1"), ("p(95) < 2%/h", "ms or s"), (42, "is not a threshold")])
def test_bad_threshold_expressions_name_their_key(expr: object, says: str) -> None:
    with pytest.raises(gates.GatesError, match=r"`gates\.D\.thresholds\.soak\.latency`") as err:
        gates.parse_threshold("gates.D.thresholds.soak.latency", expr)
    assert says in str(err.value)


def test_a_bad_expression_in_gates_yaml_fails_at_load(tmp_path: Path) -> None:
    doc = yaml.safe_load(gates.GATES_FILE.read_text())
    doc["gates"]["D"]["thresholds"]["soak"]["latency"] = "p(95) under 1500"
    bad = tmp_path / "gates.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(gates.GatesError, match=r"`gates\.D\.thresholds\.soak\.latency` is not a threshold"):
        gates.load("ci", bad)
    doc["gates"]["D"]["thresholds"]["soak"]["latency"] = "p(95) < 1500"
    doc["profiles"]["ci"]["overrides"]["gates.D.soak.duraton_s"] = 10
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(gates.GatesError, match="duraton_s"):
        gates.load("ci", bad)


def test_the_history_file_round_trips(tmp_path: Path) -> None:
    h = History(tmp_path / "h.jsonl")
    op = Op("op1", "appserver", "n1", T0, T0 + 1, "fail", "timeout", True, "tr1")
    fault = Fault("latency", "n1", "n1", T0, T0 + 2, {"latency_ms": 300})
    h.add(op)
    h.add(fault)
    assert history.load(h.path) == [op, fault]
    assert asdict(op)["type"] == "op" and math.isclose(op.latency_ms or 0, 1000)


def test_a_result_the_manager_never_got_is_caught(tmp_path: Path, g: gates.Gates) -> None:
    """The node logged the turn done; the manager failed it as timed out 19 s later: the result was dropped."""
    ops, ev = soak_history(tmp_path / "history.jsonl", n=10)
    ops[4].outcome, ops[4].error_kind = "fail", "timeout"
    ev.tasks["task4"].update(state="failed", error_kind="timeout", at=T0 + 24)
    ev.node_ok["task4"] = T0 + 4.5
    ev.tasks["task6"].update(state="failed", error_kind="timeout", at=T0 + 26)  # the node's answer raced it: no drop
    ev.node_ok["task6"] = T0 + 25.8
    ops[6].outcome, ops[6].error_kind = "fail", "timeout"
    once = checkers.exactly_once(ops, ev)
    assert once.dropped == 1 and "task4" in once.examples[0]
    assert not judge(g, ops, [], ev)["dropped == 0"].passed


def chat_history(n: int = 8) -> tuple[list[Op], Evidence]:
    """Turns sent through the bot, each in a chat of its own: the bot started one task there, the manager holds it
    done, the model was asked once, and the chat shows the answer once (edited into the placeholder)."""
    ops, ev = [], Evidence()
    for i in range(n):
        op = Op(f"c{i}", "chat", NODES[i % 2], T0 + i, T0 + i + 0.5, "ok", prompt=f"chat c{i}", chat_id=900_000 + i)
        ops.append(op)
        ev.chat_tasks[str(op.chat_id)] = [f"task_c{i}"]
        ev.tasks[f"task_c{i}"] = {"state": "done", "error_kind": None, "text": f"mock reply: chat c{i}"}
        ev.serves[f"chat c{i}"] = ev.finals[f"task_c{i}"] = 1
        ev.chats[str(op.chat_id)] = [f"mock reply: chat c{i}"]
    return ops, ev


def test_turns_through_the_bot_are_checked_in_their_chat(tmp_path: Path, g: gates.Gates) -> None:
    """What the user saw is the evidence: an outcome shown twice is a duplicate, a placeholder never resolved a loss."""
    ops, ev = chat_history()
    assert checkers.exactly_once(ops, ev).tasks == 8 and judge(g, ops, [], ev)["duplicates == 0"].passed
    ev.chats["900001"].append("mock reply: chat c1")               # the answer shown twice (a replayed event)
    ev.chat_tasks["900002"].append("task_c2b")                     # the bot took the same message twice
    ev.chats["900003"] = ["⏳ Working on it on n2…"]               # done in the manager, never shown
    ev.chats["900004"] = ["⏳ Working on it on n1…"]               # a placeholder, and the turn never reached the
    del ev.tasks["task_c4"], ev.serves["chat c4"]                  # manager: acknowledged to the user, then lost
    ev.tasks["task_c5"]["state"] = "failed"                        # the chat shows an answer the manager failed
    ops[5].outcome = "fail"
    ev.chats["900006"] = ["Codex turn failed: kind=node_offline, retriable=yes: the node is offline"]
    ev.tasks["task_c6"].update(state="failed", error_kind="node_offline")  # a failure shown once: sound
    ops[6].outcome, ops[6].error_kind = "fail", "node_offline"
    ops[7].outcome, ops[7].detail = "unknown", checkers.CHAT_UNANSWERED  # the bot died holding the message:
    ev.chats["900007"], ev.chat_tasks["900007"] = [], []           # no turn, an unknown, counted as unanswered
    del ev.serves["chat c7"]
    ev.chats["900000"].insert(0, "⏳ Working on it on n1…")       # answered after a bot restart: a stale
                                                                   # placeholder beside it, not a second outcome
    evidence.save(ev, tmp_path / "evidence.json")                  # as `harness check` reads it again
    once = checkers.exactly_once(ops, evidence.load(tmp_path / "evidence.json"))
    assert (once.duplicates, once.lost, once.inconsistent, once.unrecorded) == (2, 2, 1, 0), once.examples
    assert once.unknown == {"absent": 1} and (once.unanswered, once.stale_placeholders) == (1, 1)
    assert not judge(g, ops, [], ev)["lost == 0"].passed


def test_a_bot_kill_hurts_only_turns_through_the_bot(g: gates.Gates) -> None:
    """A bot fault's path is the chat ops: control-API ops meanwhile stay steady, and it recovers when a turn
    through the bot answers again on every node."""
    bot_kill = Fault("bot_kill", "bot", "all", T0 + 10, T0 + 12)
    ops = [Op(f"d{i}", "dispatch_text", NODES[i % 2], T0 + i, T0 + i + 0.2, "ok", task_id=f"t{i}", prompt=f"p{i}")
           for i in range(20)]
    ops += [Op("c1", "chat", "n1", T0 + 11, T0 + 25, "unknown", chat_id=1),
            Op("c2", "chat_probe", "n1", T0 + 13, T0 + 14, "ok", chat_id=2),
            Op("c3", "chat_probe", "n2", T0 + 13, T0 + 15.5, "ok", chat_id=3)]
    s = checkers.summarize(ops, [bot_kill], None, [], 60, 0.05, 20)
    assert [r.rto_s for r in s.recoveries] == [pytest.approx(3.5)]     # n2's chat probe came last
    assert s.steady.ops == 20 and s.steady.ok == 20                    # the control ops were never on its path
