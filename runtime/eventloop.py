"""How every service runs its event loop.

uvloop is the default: a relay spends most of its CPU in the loop's socket transports, not in its
own logic (py-spy on the manager under load, bench/README.md), and uvloop's are written in C.
`asyncio` stays selectable, e.g. for asyncio's debug mode or to compare the two in a bench.
"""
from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

LOOPS = ("uvloop", "asyncio")
DEFAULT = "uvloop"

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], loop: str = DEFAULT) -> T:
    if loop not in LOOPS:
        raise ValueError(f"unknown event loop {loop!r}: use one of {', '.join(LOOPS)}")
    if loop == "uvloop":
        return uvloop.run(main)
    return asyncio.run(main)
