"""The bot's turn journal (runtime/bot/journal.py): what a restarted bot finds on disk decides whether it resumes
a turn, shows nothing twice, and forgets nothing it had shown a user a placeholder for."""
from __future__ import annotations

from pathlib import Path

from runtime.bot.journal import DONE_KEEP, Entry, Journal


def entry(task_id: str) -> Entry:
    return Entry(task_id, 7, 1002, "n1", "tr1", f"text of {task_id}", 1_800_000_000.0)


def test_an_open_turn_survives_a_restart_with_its_placeholder(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    j.begin(entry("task_a"))
    j.placed("task_a", 42)
    j.begin(entry("task_b"))  # killed before its placeholder was sent: resumed, answered in a new message
    again = Journal(str(tmp_path))
    assert {t: (e.message_id, e.text) for t, e in again.open.items()} == {
        "task_a": (42, "text of task_a"), "task_b": (None, "text of task_b")}
    assert not again.shown("task_a")


def test_a_turn_is_off_the_disk_only_once_shown(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    j.begin(entry("task_a"))
    j.remember("task_a")  # being shown: a concurrent result event must skip it...
    assert j.shown("task_a")
    assert "task_a" in Journal(str(tmp_path)).open  # ...but a crash now resumes it rather than lose it
    j.finish("task_a")
    again = Journal(str(tmp_path))
    assert not again.open and again.shown("task_a")  # a replayed result event is not shown again


def test_the_shown_ids_are_bounded(tmp_path: Path) -> None:
    j = Journal(str(tmp_path))
    for i in range(DONE_KEEP + 5):
        j.remember(f"t{i}")
    j.finish("last")
    again = Journal(str(tmp_path))
    assert len(again.done) == DONE_KEEP and again.shown("last") and not again.shown("t0")


def test_without_a_state_dir_it_keeps_memory_only() -> None:
    j = Journal("")
    j.begin(entry("task_a"))
    j.finish("task_a")
    assert j.shown("task_a") and j.path is None
