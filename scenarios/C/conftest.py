"""Stage C's fixture: the module's stack with its node (the module's NODE, with its NODE_SETTINGS and the extra allowed
roots its NODE_ROOTS names, if any) and the real bot on the fake Bot API, with the module's BOT_SETTINGS if any."""
from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from harness.ends.telegram import FakeTelegram
from harness.stack.stack import Stack


@pytest.fixture(scope="module")
async def tg(stack: Stack, request: pytest.FixtureRequest) -> AsyncIterator[FakeTelegram]:
    await stack.add_node(request.module.NODE, roots=getattr(request.module, "NODE_ROOTS", ()),
                         **getattr(request.module, "NODE_SETTINGS", {}))
    yield await stack.start_bot(**getattr(request.module, "BOT_SETTINGS", {}))
