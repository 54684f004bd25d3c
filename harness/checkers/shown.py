"""What a Telegram chat shows for one turn, read from the bot's messages as the user sees them.

A chat op of the soak has a chat of its own, so every bot message there is that turn's: its final answer, a
failure (`kind=<kind>, retriable=...`, the line every failure ends with), or a placeholder still working (⏳).
The steady generator reads it to learn an op's outcome, and the exactly-once checker to count what was shown.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

WORKING = "⏳"  # the placeholder and its progress edits carry it; a final answer or failure never does
FAILURE = re.compile(r"kind=([a-z_]+), retriable=(?:yes|no)")


def answer(prompt: str) -> str:
    """The mock model's reply to `prompt` (its key), which the bot shows as the turn's final answer."""
    return f"mock reply: {prompt}"


@dataclass
class Shown:
    answers: int = 0                                     # messages showing the turn's answer
    failures: list[str] = field(default_factory=list)    # the error kind of each failure shown
    working: int = 0                                     # placeholders never resolved

    @property
    def finals(self) -> int:
        """Outcomes shown: more than one is the user seeing the same turn end twice."""
        return self.answers + len(self.failures)


def classify(texts: list[str], prompt: str) -> Shown:
    out = Shown()
    for text in texts:
        if WORKING in text:
            out.working += 1
        elif answer(prompt) in text:
            out.answers += 1
        elif found := FAILURE.search(text):
            out.failures.append(found[1])
    return out
