"""gates.yaml, validated at load, and the verdict of each stage's gate from its case results.

A bad file fails with the key that is wrong; no threshold is written anywhere but gates.yaml.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.cases import Case, stage_cases
from harness.paths import REPO_ROOT

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

    def stage_path(self, stage: str) -> Path:
        return REPO_ROOT / self.raw["stages"][stage]

    def setting(self, path: str) -> Any:
        """A profile's override wins over the gate's own value (durations in D, for instance)."""
        overrides = self.raw["profiles"][self.profile].get("overrides", {})
        if path in overrides:
            return overrides[path]
        node: Any = self.raw
        for part in path.split("."):
            node = node[part]
        return node

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
        _get(doc, f"stages.{stage}", str)
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
    if profile not in PROFILES:
        raise GatesError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    return Gates(doc, profile)


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


def evaluate(stage: str, runs: dict[str, CaseRuns], gates: Gates, complete: bool, seconds: float) -> Verdict:
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
