"""Background tasks that are never lost: each is referenced until it ends, and one that dies is logged."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from runtime.logfmt import log

T = TypeVar("T")


class Background:
    """The event loop keeps only weak references to tasks: one nobody holds can vanish mid-run."""

    def __init__(self, logger: logging.Logger, **context: Any) -> None:
        self.logger = logger
        self.context = context
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log(self.logger, logging.ERROR, "background_task_failed", task=task.get_name(),
                error=f"{type(exc).__name__}: {exc}", **self.context)

    @contextlib.asynccontextmanager
    async def scoped(self, coro: Coroutine[Any, Any, Any], name: str) -> AsyncIterator[asyncio.Task[Any]]:
        """A task that lives exactly as long as the `async with` block."""
        task = self.spawn(coro, name)
        try:
            yield task
        finally:
            await cancel(task)

    async def close(self) -> None:
        for task in list(self.tasks):
            await cancel(task)


async def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a task and wait until it has ended, whatever it raised."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves: that must not be swallowed with the task's
    except Exception:  # noqa: BLE001 - its failure was logged by Background._done, or is the caller's to ignore
        pass
