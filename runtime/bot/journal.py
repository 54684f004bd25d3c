"""The bot's turns in hand, kept on disk so a restart neither loses a turn nor shows an answer twice.

A SIGKILLed bot forgets what it was doing. Without this file its successor learns of a finished turn only from
the manager's replayed result event, cannot tell whether the old process had already shown it (so it showed it
again: the torture soak, R-06, caught answers shown twice), and knows nothing of a turn whose placeholder was
sent but whose dispatch never reached the manager (that turn was lost). So each turn is written here when it
starts, with its placeholder's message id once sent, and marked done only after its outcome is shown; a restart
resumes every open turn: it asks the manager again under the same task_id (the manager never runs one twice, it
answers with what the first became) and edits the outcome into the same placeholder, which is harmless to repeat.
The ids of recently shown turns are kept too, so a replayed result event for one of them is skipped.

A small JSON file replaced atomically, like the event cursor beside it: the open turns are the few in flight.
"""
from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

DONE_KEEP = 1000  # shown turns remembered, so a late or replayed result event is not shown again


@dataclass
class Entry:
    task_id: str
    chat_id: int
    user_id: int
    node_id: str
    trace_id: str
    text: str
    started_at: float            # wall clock: a restarted bot keeps the turn's deadline
    message_id: int | None = None  # the placeholder, once sent; the outcome is edited into it


class Journal:
    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / "turns.json" if state_dir else None
        self.open: dict[str, Entry] = {}
        self.done: OrderedDict[str, None] = OrderedDict()
        if self.path is not None and self.path.exists():
            saved = json.loads(self.path.read_text())
            self.open = {e["task_id"]: Entry(**e) for e in saved["open"]}
            self.done = OrderedDict.fromkeys(saved["done"])

    def begin(self, entry: Entry) -> None:
        self.open[entry.task_id] = entry
        self._save()

    def placed(self, task_id: str, message_id: int | None) -> None:
        if (entry := self.open.get(task_id)) is not None and message_id is not None:
            entry.message_id = message_id
            self._save()

    def remember(self, task_id: str) -> None:
        """Shown, or being shown now: in memory at once, so a concurrent result event is not shown too."""
        self.done[task_id] = None
        self.done.move_to_end(task_id)
        while len(self.done) > DONE_KEEP:
            self.done.popitem(last=False)

    def finish(self, task_id: str) -> None:
        """Its outcome is shown: on disk only now, so a crash before this point resumes the turn instead."""
        self.remember(task_id)
        self.open.pop(task_id, None)
        self._save()

    def shown(self, task_id: str) -> bool:
        return task_id in self.done

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps({"open": [asdict(e) for e in self.open.values()], "done": list(self.done),
                                       "saved_at": time.time()}))
        os.replace(partial, self.path)
