"""The bot's place in the manager's numbered events, kept on disk so a restarted bot catches up.

Results and approvals that happened while the bot was down come again on reconnect (?after=), and those it
had handled do not. The place saved is just below the oldest event still being handled, so a crash mid-way
repeats at most what was in hand, never skips it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


class Cursor:
    def __init__(self, state_dir: str) -> None:
        self.path = Path(state_dir) / "events.json" if state_dir else None
        self.manager_id = ""
        self.seq = 0
        self._in_hand: set[int] = set()
        self._newest = 0
        if self.path is not None and self.path.exists():
            saved = json.loads(self.path.read_text())
            self.manager_id, self.seq = str(saved["manager_id"]), int(saved["seq"])
            self._newest = self.seq

    def query(self) -> dict[str, str]:
        """What the event stream is asked for: everything after our place, if we have one."""
        return {"after": str(self.seq), "manager": self.manager_id} if self.manager_id else {}

    def hello(self, manager_id: str, last_seq: int) -> None:
        """A new manager database (or none saved): start at its newest event, without a replay of its past."""
        if manager_id != self.manager_id:
            self.manager_id, self.seq, self._newest = manager_id, last_seq, last_seq
            self._in_hand.clear()
            self._save()

    def taken(self, seq: int) -> bool:
        """False for an event already handled (a replay overlapping what we had)."""
        if seq <= self.seq or seq in self._in_hand:
            return False
        self._in_hand.add(seq)
        self._newest = max(self._newest, seq)
        return True

    def done(self, seq: int) -> None:
        self._in_hand.discard(seq)
        self.seq = min(self._in_hand) - 1 if self._in_hand else self._newest
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps({"manager_id": self.manager_id, "seq": self.seq}))
        os.replace(partial, self.path)
