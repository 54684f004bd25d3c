"""What every handler gets: the request it serves (chat, user, trace_id) and the bot's long-lived parts."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from telegram import InlineKeyboardMarkup, Message, Update

from runtime.bot import render
from runtime.protocol import Api, new_id

if TYPE_CHECKING:
    from runtime.bot.access import Access
    from runtime.bot.approvals import Approvals
    from runtime.bot.config import BotConfig
    from runtime.bot.delivery import Delivery
    from runtime.bot.flood import Flood
    from runtime.bot.manager_client import ManagerClient
    from runtime.bot.turns import Turns
    from runtime.bot.wizard import Wizards

CHAT_KEY_PREFIX = "tg:"


def chat_key(chat_id: int) -> str:
    return f"{CHAT_KEY_PREFIX}{chat_id}"


def chat_id_of(key: str | None) -> int | None:
    """The Telegram chat behind a chat_key, or None if the key belongs to another front end."""
    if not key or not key.startswith(CHAT_KEY_PREFIX):
        return None
    try:
        return int(key.removeprefix(CHAT_KEY_PREFIX))
    except ValueError:
        return None


class Reply(Exception):
    """A prompt the user must act on (no node selected, usage, offline...): shown as-is, not as a failure."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Req:
    chat_id: int
    user_id: int
    user_label: str        # who decided, as shown on approvals: "@alice (tg:7)"
    trace_id: str
    query_id: str | None = None      # set for a button press
    message_id: int | None = None    # the bot message whose button was pressed

    @property
    def chat_key(self) -> str:
        return chat_key(self.chat_id)

    @classmethod
    def of(cls, update: Update) -> Req | None:
        """None when there is nobody to authorise (a message without `from`) or no chat to answer in
        (a button on an inline message, which has no `message`)."""
        user, chat, query = update.effective_user, update.effective_chat, update.callback_query
        if user is None or chat is None:
            return None
        name = f"@{user.username}" if user.username else user.full_name
        return cls(chat.id, user.id, f"{name} (tg:{user.id})", new_id("tr"), query.id if query else None,
                   query.message.message_id if query and query.message else None)


@dataclass
class Relay:
    config: BotConfig
    manager: ManagerClient
    access: Access
    delivery: Delivery
    approvals: Approvals
    turns: Turns
    flood: Flood
    wizards: Wizards

    async def say(self, req: Req, text: str, markup: InlineKeyboardMarkup | None = None) -> Message | None:
        return await self.delivery.send(req.chat_id, text, markup, trace_id=req.trace_id)

    async def chat(self, req: Req) -> dict[str, Any]:
        return await self.manager.get(Api.CHAT, req.trace_id, chat_key=req.chat_key)

    async def selected_node(self, req: Req) -> tuple[str, dict[str, Any]]:
        """The chat's node and its route, or the prompt to pick one."""
        chat = await self.chat(req)
        if not chat.get("node_id"):
            raise Reply(render.NO_NODE)
        return str(chat["node_id"]), chat

    async def appserver(self, req: Req, node_id: str, method: str, params: dict[str, Any]) -> Any:
        return await self.manager.appserver(node_id, method, params, req.trace_id, self.config.appserver_timeout)
