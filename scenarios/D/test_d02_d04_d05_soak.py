"""D-02, D-04, D-05: one soak of the real stack (manager, nodes, real codex, Toxiproxy on every link) under
steady load and a seeded fault schedule; each case judges its part of the same history."""
from __future__ import annotations

import allure
import pytest

from harness.gates import gates
from harness.load.soak import SoakRun, criteria

PNG = allure.attachment_type.PNG


def _attach(run: SoakRun, *files: str) -> None:
    types = {".png": PNG, ".json": allure.attachment_type.JSON}
    for name in files:
        path = run.out_dir / name
        if path.exists():
            allure.attach.file(path, name=name, attachment_type=types.get(path.suffix, allure.attachment_type.TEXT))


def _failed(g: gates.Gates, run: SoakRun, metrics: set[str]) -> list[str]:
    wanted = {t.expr for t in gates.thresholds(g, "soak") if t.metric in metrics}
    return [f"{c.name}: {c.detail}" for c in criteria(g, run.summary) if c.name.split(": ", 1)[1] in wanted
            and not c.passed]


@pytest.mark.case("D-02")
async def test_soak_success_and_latency(soak: SoakRun, gates_config: gates.Gates) -> None:
    """a steady mixed load (turns, app-server calls, approvals) for the profile's duration"""
    _attach(soak, "report.txt", "latency.png", "errors.png", "history.jsonl", "checks.json")
    assert not soak.stopped_early, "the soak was stopped before its duration"
    assert soak.summary.all.ops > 0, "the soak made no operations"
    assert not _failed(gates_config, soak, {"rate", "rate_all", "p"})


@pytest.mark.case("D-04")
async def test_soak_faults_recover_exactly_once(soak: SoakRun, gates_config: gates.Gates) -> None:
    """every fault of the seeded schedule is injected and recovered from; nothing lost or run twice"""
    _attach(soak, "schedule.json", "evidence.json", "latency.png")
    planned = {p.kind for p in soak.plan}
    played = {f.fault for f in soak.faults}
    assert planned == set(soak.settings.kinds), f"the schedule misses kinds: {set(soak.settings.kinds) - planned}"
    assert played == planned, f"planned but never injected: {planned - played}; skipped: {soak.skipped}"
    never = [f"{r.fault} on {r.target}" for r in soak.summary.recoveries if r.rto_s is None]
    assert not never, f"never recovered: {never}"
    eo = soak.summary.exactly_once
    assert eo is not None
    assert not soak.still_open, f"tasks still open after settling: {soak.still_open[:5]}"
    assert (eo.duplicates, eo.unrecorded, eo.lost, eo.dropped, eo.inconsistent) == (0, 0, 0, 0, 0), eo.examples
    assert "open" not in eo.unknown, f"unknown ops whose task never settled: {eo.unknown}"
    assert not _failed(gates_config, soak, {"rto p", "rto max", "duplicates", "lost", "dropped"})


@pytest.mark.case("D-05")
async def test_soak_resource_trends(soak: SoakRun, gates_config: gates.Gates) -> None:
    """RSS, open fds and threads of the manager, each node and each codex child show no leak trend"""
    _attach(soak, "resources.png", "resources.jsonl")
    def role(process: str) -> str:
        return "codex" if process.endswith("/codex") else "node" if process in soak.settings.nodes else process

    judged = {role(t.process) for t in soak.summary.trends if t.judged}
    assert {"manager", "node", "codex"} <= judged, f"only these had a series long enough to judge: {judged}"
    assert not _failed(gates_config, soak, {"rss_slope", "fd_slope", "threads_slope"})
