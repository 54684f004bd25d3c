"""The case catalogue (scenarios/catalogue.yaml): what each case id is, its kind, and what it expects."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import yaml

from harness.stack.paths import REPO_ROOT

CATALOGUE = REPO_ROOT / "scenarios" / "catalogue.yaml"


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    kind: str  # N critical normal, F critical fault, S supporting
    case: str
    expected: str
    seed: bool = False
    recovery: bool = False

    @property
    def gate(self) -> str:
        return self.stage[0]


@cache
def catalogue() -> dict[str, Case]:
    entries = yaml.safe_load(CATALOGUE.read_text())
    cases = {}
    for e in entries:
        cases[e["id"]] = Case(e["id"], e["stage"], e["kind"], e["case"], e.get("expected") or e["case"],
                              bool(e.get("seed")), bool(e.get("recovery")))
    return cases


def stage_cases(stage: str) -> list[Case]:
    return [c for c in catalogue().values() if c.stage == stage]
