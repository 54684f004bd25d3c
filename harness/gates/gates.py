"""gates.yaml, validated at load, and the verdict of each stage's gate from its case results.

A bad file fails with the key that is wrong; no threshold is written anywhere but gates.yaml.
"""
from __future__ import annotations

import fcntl
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.gates.cases import Case, stage_cases
from harness.stack.paths import REPO_ROOT

GATES_FILE = REPO_ROOT / "gates.yaml"
STAGES = ("A1", "A2", "A3", "B1", "B2", "C", "D")
PROFILES = ("quick", "ci", "full")


class GatesError(Exception):
    """gates.yaml is wrong; the message names the key and what it should be."""


def _get(doc: Any, path: str, kind: type | tuple[type, ...], check: Any = None) -> Any:
    node = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise GatesError(f"gates.yaml: missing key `{path}`")
        node = node[part]
    if not isinstance(node, kind) or isinstance(node, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise GatesError(f"gates.yaml: `{path}` must be {getattr(kind, '__name__', kind)}, got {node!r}")
    if check is not None and not check(node):
        raise GatesError(f"gates.yaml: `{path}` is out of range: {node!r}")
    return node


@dataclass(frozen=True)
class Gates:
    raw: dict[str, Any]
    profile: str

    @property
    def order(self) -> list[str]:
        return list(self.raw["order"])

    def stage_paths(self, stage: str) -> list[Path]:
        """The files or folders that make up a stage: one path, or a list of them."""
        paths = self.raw["stages"][stage]
        return [REPO_ROOT / p for p in ([paths] if isinstance(paths, str) else paths)]

    def setting(self, path: str) -> Any:
        """A profile's override wins over the gate's own value (durations in D, for instance)."""
        overrides = self.raw["profiles"][self.profile].get("overrides", {})
        if path in overrides:
            return overrides[path]
        node: Any = self.raw
        for part in path.split("."):
            node = node[part]
        return node

    def workers(self, stage: str) -> int:
        """pytest-xdist workers for the stage under `harness gate`; 1 means one process, no xdist."""
        return int(self.raw["workers"][stage])

    def required_passes(self, kind: str) -> int:
        full = int(self.raw["gates"]["A"]["consecutive_passes"].get(kind, 1))
        return max(1, math.ceil(full * float(self.raw["profiles"][self.profile]["repeat_scale"])))


def load(profile: str = "full", path: Path = GATES_FILE) -> Gates:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise GatesError(f"gates.yaml: cannot read {path.name}: {exc}") from None
    _get(doc, "version", int, lambda v: v == 1)
    order = _get(doc, "order", list)
    if order != list(STAGES):
        raise GatesError(f"gates.yaml: `order` must be {list(STAGES)}: the plan's order is fixed")
    for stage in STAGES:
        _check_stage_paths(stage, _get(doc, f"stages.{stage}", (str, list)))
        _get(doc, f"workers.{stage}", int, lambda v: 1 <= v <= 16)
    for name in PROFILES:
        _get(doc, f"profiles.{name}.repeat_scale", (int, float), lambda v: 0 < v <= 1)
        _get(doc, f"profiles.{name}", dict)
    for kind in ("N", "F"):
        _get(doc, f"gates.A.consecutive_passes.{kind}", int, lambda v: v >= 1)
    for key in ("gates.B.pass_rate", "gates.B.recovery_pass_rate", "gates.C.pass_rate"):
        _get(doc, key, (int, float), lambda v: 0 < v <= 1)
    for key in ("checks.health_timeout_s", "checks.roundtrip_timeout_s", "checks.settle_timeout_s"):
        _get(doc, key, (int, float), lambda v: v > 0)
    for case_id in ("B1-03", "B1-04"):
        _get(doc, f"cases.{case_id}.thread_list_timeout_s", (int, float), lambda v: v > 0)
    for name in PROFILES:  # every profile's D, overrides applied, so a typo in an override fails here too
        _check_d(Gates(doc, name))
    if profile not in PROFILES:
        raise GatesError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    return Gates(doc, profile)


def _check_stage_paths(stage: str, paths: str | list[Any]) -> None:
    listed = [paths] if isinstance(paths, str) else paths
    if not listed or not all(isinstance(p, str) and p.strip() for p in listed):
        raise GatesError(f"gates.yaml: `stages.{stage}` must be a path or a non-empty list of paths "
                         f"(scenario files or folders), got {paths!r}")


# ---- gate D: its settings and its thresholds ---------------------------------------------------

NUMBER = (int, float)
D_SETTINGS: dict[str, tuple[type | tuple[type, ...], Callable[[Any], bool]]] = {
    "nodes": (int, lambda v: 1 <= v <= 8),
    "soak.duration_s": (NUMBER, lambda v: v > 0),
    "soak.warmup_s": (NUMBER, lambda v: v >= 0),
    "soak.rate_per_s": (NUMBER, lambda v: 0 < v <= 50),
    "soak.mix": (dict, lambda v: v and all(isinstance(w, NUMBER) and w >= 0 for w in v.values()) and sum(v.values()) > 0),
    "soak.op_timeout_s": (NUMBER, lambda v: v > 0),
    "soak.max_inflight": (int, lambda v: v >= 1),
    "soak.chats_per_node": (int, lambda v: v >= 1),
    "soak.sample_interval_s": (NUMBER, lambda v: v > 0),
    "soak.progress_interval_s": (NUMBER, lambda v: v > 0),
    "faults.seed": (int, lambda v: True),
    "faults.interval_s": (NUMBER, lambda v: v > 0),
    "faults.duration_s": (list, lambda v: len(v) == 2 and all(isinstance(x, NUMBER) for x in v) and 0 < v[0] <= v[1]),
    "faults.recovery_timeout_s": (NUMBER, lambda v: v > 0),
    "faults.probe_interval_s": (NUMBER, lambda v: v > 0),
    "faults.kinds": (list, lambda v: len(v) > 0),
    "burst.users": (int, lambda v: v >= 1),
    "burst.spawn_rate": (NUMBER, lambda v: v > 0),
    "burst.duration_s": (NUMBER, lambda v: v > 0),
    "trend.alpha": (float, lambda v: 0 < v < 1),
    "trend.min_samples": (int, lambda v: v >= 3),
    "torture.runs": (int, lambda v: v >= 1),
    "torture.seed": (int, lambda v: True),
    "torture.duration_s": (NUMBER, lambda v: v > 0),
    "torture.warmup_s": (NUMBER, lambda v: v >= 0),
    "torture.rate_per_s": (NUMBER, lambda v: 0 < v <= 50),
    "torture.mix": (dict, lambda v: v and all(isinstance(w, NUMBER) and w >= 0 for w in v.values()) and sum(v.values()) > 0),
    "torture.interval_s": (NUMBER, lambda v: v > 0),
    "torture.fault_duration_s": (list, lambda v: len(v) == 2 and all(isinstance(x, NUMBER) for x in v) and 0 < v[0] <= v[1]),
    "torture.recovery_timeout_s": (NUMBER, lambda v: v > 0),
    "torture.kinds": (list, lambda v: len(v) > 0),
    "torture.min_faults": (int, lambda v: v >= 1),
}
MIX_KINDS = ("dispatch_text", "appserver", "approval", "chat")


def _check_d(g: Gates) -> None:
    overrides = g.raw["profiles"][g.profile].get("overrides") or {}
    if not isinstance(overrides, dict):
        raise GatesError(f"gates.yaml: `profiles.{g.profile}.overrides` must be a mapping of dotted keys")
    for key in overrides:
        node: Any = g.raw
        for part in str(key).split("."):
            if not isinstance(node, dict) or part not in node:
                raise GatesError(f"gates.yaml: `profiles.{g.profile}.overrides` names `{key}`, which is not a setting")
            node = node[part]
    where = f" (profile {g.profile})" if overrides else ""
    for key, (kind, check) in D_SETTINGS.items():
        path = f"gates.D.{key}"
        try:
            value = g.setting(path)
        except (KeyError, TypeError):
            raise GatesError(f"gates.yaml: missing key `{path}`") from None
        if not isinstance(value, kind) or isinstance(value, bool) or not check(value):
            raise GatesError(f"gates.yaml: `{path}`{where} is out of range or of the wrong type: {value!r}")
    from harness.faults.kinds import KINDS  # where each fault kind is declared

    for part in ("soak", "torture"):
        unknown_mix = sorted(set(g.setting(f"gates.D.{part}.mix")) - set(MIX_KINDS))
        if unknown_mix:
            raise GatesError(f"gates.yaml: `gates.D.{part}.mix` has unknown kinds {unknown_mix}: use {', '.join(MIX_KINDS)}")
    for key in ("gates.D.faults.kinds", "gates.D.torture.kinds"):
        unknown = sorted(set(g.setting(key)) - set(KINDS))
        if unknown:
            raise GatesError(f"gates.yaml: `{key}` has unknown kinds {unknown}: use {', '.join(KINDS)}")
    for section in SECTIONS:
        thresholds(g, section)


# A threshold reads like k6's: `p(95) < 1500`, `rate >= 0.995`, `rto p(95) < 5s`, `rss_slope < 2%/h`.
_EXPR = re.compile(r"^\s*(?P<metric>rto\s+p\(\s*(?P<rq>\d+(?:\.\d+)?)\s*\)|rto\s+max"
                   r"|p\(\s*(?P<q>\d+(?:\.\d+)?)\s*\)|[a-z_][a-z0-9_]*)"
                   r"\s*(?P<op><=|>=|==|<|>)\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|%/h|%|MB/h|MB|/h)?\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b}
# metric -> its unit: ms for times (a bare number is ms, as in k6), a fraction for rates, %/h for slopes.
METRIC_UNITS = {"p": "ms", "rto p": "ms", "rto max": "ms", "rate": "fraction", "rate_all": "fraction",
                "rss_slope": "%/h", "fd_slope": "%/h", "threads_slope": "%/h", "duplicates": "count", "lost": "count",
                "dropped": "count", "codex_rss_peak": "MB"}
# What each part of D measures: a burst has no faults and is too short for a trend, nor is a torture run, whose
# faults come too densely for a steady state to judge latency or resources by.
SECTIONS = {"soak": tuple(METRIC_UNITS), "burst": ("p", "rate", "rate_all", "duplicates", "lost", "dropped"),
            "torture": ("rate", "rate_all", "rto p", "rto max", "duplicates", "lost", "dropped")}


@dataclass(frozen=True)
class Threshold:
    key: str            # the dotted key in gates.yaml, for messages
    expr: str
    metric: str         # a key of METRIC_UNITS
    q: float | None     # the percentile, for p and rto p
    op: str
    limit: float        # in the metric's unit
    per_hour: str = ""  # a slope: "%/h" relative to the series' median, or "MB/h", "/h" absolute

    @property
    def label(self) -> str:
        """What the checker is asked for; a slope's unit is part of it, since both kinds are measured."""
        if self.q is not None:
            return f"{self.metric}({self.q:g})"
        return f"{self.metric} {self.per_hour}" if self.per_hour else self.metric

    def holds(self, value: float | None) -> bool:
        return value is not None and not math.isnan(value) and _OPS[self.op](value, self.limit)

    def show(self, value: float | None) -> str:
        unit = METRIC_UNITS[self.metric]
        if value is None:
            return "not measured"
        if math.isinf(value):
            return "never"
        if unit == "ms":
            return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"
        if unit == "fraction":
            return f"{value:.2%}"
        if unit == "%/h":
            return f"{value:+.2f}{self.per_hour}"
        if unit == "MB":
            return f"{value:.0f} MB"
        return f"{value:g}"


def parse_threshold(key: str, expr: Any) -> Threshold:
    """One expression; anything malformed fails naming its key, with an example of what it should say."""
    m = _EXPR.match(expr) if isinstance(expr, str) else None
    if m is None:
        raise GatesError(f"gates.yaml: `{key}` is not a threshold: {expr!r}; write `<metric> <op> <value>`, "
                         "e.g. `p(95) < 1500`, `rate >= 0.995`, `rto p(95) < 5s`, `rss_slope < 2%/h`")
    metric = re.sub(r"\s+", " ", m["metric"])
    q = m["q"] or m["rq"]
    metric = "rto p" if m["rq"] else "p" if m["q"] else metric
    if metric not in METRIC_UNITS:
        raise GatesError(f"gates.yaml: `{key}`: unknown metric {m['metric']!r}; use p(N), rto p(N), rto max, "
                         f"{', '.join(k for k in METRIC_UNITS if '(' not in k and ' ' not in k and k != 'p')}")
    if q is not None and not 0 <= float(q) <= 100:
        raise GatesError(f"gates.yaml: `{key}`: percentile {q} must be between 0 and 100")
    value, unit, kind = float(m["num"]), m["unit"], METRIC_UNITS[metric]
    slope_units = ("%/h", "MB/h") if metric == "rss_slope" else ("%/h", "/h")
    allowed = {"ms": (None, "ms", "s"), "fraction": (None, "%"), "%/h": slope_units, "count": (None,),
               "MB": ("MB",)}[kind]
    if unit not in allowed:
        want = {"ms": "ms or s", "fraction": "a fraction like 0.995, or 99.5%",
                "%/h": f"a slope per hour: {' or '.join(slope_units)}, e.g. 2{slope_units[0]}",
                "count": "a plain count", "MB": "megabytes, e.g. 1100MB"}[kind]
        raise GatesError(f"gates.yaml: `{key}`: {metric} takes {want}, not {unit or 'a bare number'!r}")
    if unit == "s":
        value *= 1000
    elif unit == "%":
        value /= 100
    if kind == "fraction" and not 0 <= value <= 1:
        raise GatesError(f"gates.yaml: `{key}`: a rate is between 0 and 1 (or 0% and 100%), got {expr!r}")
    return Threshold(key, expr.strip(), metric, None if q is None else float(q), m["op"], value,
                     unit if kind == "%/h" else "")


def thresholds(g: Gates, section: str) -> list[Threshold]:
    base = f"gates.D.thresholds.{section}"
    try:
        raw = g.setting(base)
    except (KeyError, TypeError):
        raise GatesError(f"gates.yaml: missing key `{base}`") from None
    if not isinstance(raw, dict) or not raw:
        raise GatesError(f"gates.yaml: `{base}` must map names to threshold expressions")
    out = []
    for name in raw:
        t = parse_threshold(f"{base}.{name}", g.setting(f"{base}.{name}"))  # a profile may override one threshold
        if t.metric not in SECTIONS[section]:
            raise GatesError(f"gates.yaml: `{base}.{name}`: a {section} does not measure {t.metric}; "
                             f"use {', '.join(SECTIONS[section])}")
        out.append(t)
    return out


Lookup = Callable[[str, float | None, str], tuple[float | None, str]]


def measure(g: Gates, section: str, lookup: Lookup) -> dict[str, tuple[float | None, str]]:
    """The value of every threshold's metric, by its label, from a checker's lookup(metric, q, per_hour)."""
    return {t.label: lookup(t.metric, t.q, t.per_hour) for t in thresholds(g, section)}


def judge(g: Gates, section: str, measured: dict[str, Any]) -> list[Criterion]:
    """One criterion per threshold: the expression, and what was measured against it."""
    out = []
    for t in thresholds(g, section):
        value, how = measured.get(t.label, (None, "not measured: its scenario did not run"))
        value = None if value is None else float(value)
        name = t.metric if t.per_hour else t.label
        out.append(Criterion(f"{section}: {t.expr}", t.holds(value), f"{name} = {t.show(value)}; {how}"))
    return out


MEASURES_FILE = "D-measures.json"


def record_measures(run_dir: Path, section: str, measured: dict[str, tuple[float | None, str]]) -> None:
    """A D scenario leaves what it measured for the gate, which judges it when the session ends."""
    path = run_dir / MEASURES_FILE
    # Locked: under xdist the soak and the burst may finish on two workers at once.
    with open(run_dir / (MEASURES_FILE + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(path.read_text()) if path.exists() else {}
        doc[section] = {label: list(v) for label, v in measured.items()}
        path.write_text(json.dumps(doc, indent=2))


def _measured_d(g: Gates, run_dir: Path | None) -> list[Criterion]:
    path = run_dir / MEASURES_FILE if run_dir is not None else None
    doc = json.loads(path.read_text()) if path is not None and path.exists() else {}
    return [c for section in SECTIONS for c in judge(g, section, doc.get(section, {}))]


# ---- verdicts ----------------------------------------------------------------------------------

@dataclass
class Criterion:
    name: str
    passed: bool
    detail: str


@dataclass
class Verdict:
    stage: str
    passed: bool
    criteria: list[Criterion] = field(default_factory=list)
    runs: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CaseRuns:
    """All runs of one case in order: True for a pass."""
    case: Case
    outcomes: list[bool] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def streak(self) -> int:
        """The longest run of consecutive passes."""
        best = cur = 0
        for ok in self.outcomes:
            cur = cur + 1 if ok else 0
            best = max(best, cur)
        return best


def evaluate(stage: str, runs: dict[str, CaseRuns], gates: Gates, complete: bool, seconds: float,
             run_dir: Path | None = None) -> Verdict:
    expected = {c.id for c in stage_cases(stage)}
    ran = {cid for cid in runs if cid in expected}
    criteria = []
    if complete:
        missing = sorted(expected - ran)
        criteria.append(Criterion("every case id of the stage ran", not missing,
                                  f"missing: {', '.join(missing)}" if missing else f"{len(ran)} cases"))
    gate = stage[0]
    if gate == "A":
        for cid in sorted(ran):
            r = runs[cid]
            need = gates.required_passes(r.case.kind)
            detail = f"{r.streak}/{need} consecutive passes ({r.case.kind})"
            if r.failures:
                detail += f"; first failure: {r.failures[0]}"
            criteria.append(Criterion(f"{cid} passes {need}x in a row", r.streak >= need, detail))
    elif gate == "D":
        # D's cases measure; its thresholds judge what they measured, one criterion each.
        rs = [runs[c] for c in sorted(ran)]
        failed = [r.case.id for r in rs if not (r.outcomes and all(r.outcomes))]
        criteria.append(Criterion("every case of the stage passes", bool(rs) and not failed,
                                  f"{len(rs) - len(failed)}/{len(rs)} passed" +
                                  (f"; failed: {', '.join(failed)}" if failed else "")))
        criteria += _measured_d(gates, run_dir)
    else:
        criteria += _rates(gate, [runs[c] for c in sorted(ran)], gates)
    passed = bool(criteria) and all(c.passed for c in criteria)
    return Verdict(stage, passed, criteria, sum(len(r.outcomes) for r in runs.values()), round(seconds, 1))


def _rates(gate: str, runs: list[CaseRuns], gates: Gates) -> list[Criterion]:
    def rate(rs: list[CaseRuns]) -> tuple[float, str]:
        ok = sum(1 for r in rs if r.outcomes and all(r.outcomes))
        failed = [r.case.id for r in rs if not (r.outcomes and all(r.outcomes))]
        return (ok / len(rs) if rs else 0.0), f"{ok}/{len(rs)} passed" + (f"; failed: {', '.join(failed)}" if failed else "")

    need = float(gates.setting(f"gates.{gate}.pass_rate"))
    value, detail = rate(runs)
    out = [Criterion(f"pass rate >= {need:.0%}", bool(runs) and value >= need, detail)]
    if gate == "B":
        chains = [r for r in runs if r.case.recovery]
        need_r = float(gates.setting("gates.B.recovery_pass_rate"))
        value_r, detail_r = rate(chains)
        out.append(Criterion(f"recovery chains pass rate >= {need_r:.0%}", bool(chains) and value_r >= need_r, detail_r))
    return out


def table(verdicts: list[Verdict]) -> str:
    rows = [("stage", "verdict", "runs", "seconds", "criteria")]
    for v in verdicts:
        ok = sum(1 for c in v.criteria if c.passed)
        rows.append((v.stage, "PASS" if v.passed else "FAIL", str(v.runs), f"{v.seconds:.1f}",
                     f"{ok}/{len(v.criteria)} met"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    for v in verdicts:
        lines += [f"  {v.stage}: {c.name}: {c.detail}" for c in v.criteria if not c.passed]
    return "\n".join(lines)
