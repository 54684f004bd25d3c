"""A test's hands and eyes on the fake Bot API: inject what a user types or taps, read what the bot sent.

Every read waits on the fake's long-poll (`wait=`), so no scenario sleeps to see a reply.
"""
from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import aiohttp


class TelegramUser:
    """One user in one private chat with the bot."""

    def __init__(self, tg: FakeTelegram, user_id: int, chat_id: int | None = None) -> None:
        self.tg, self.user_id, self.chat_id = tg, user_id, chat_id or user_id

    async def say(self, text: str) -> int:
        """Type a message; returns the call sequence number to read replies after."""
        since = await self.tg.last_seq()
        await self.tg.post("message", {"chat_id": self.chat_id, "user_id": self.user_id, "text": text})
        return since

    async def upload(self, kind: str, data: bytes, caption: str = "", **spec: Any) -> int:
        """Send a document, photo or voice note (`kind`) with a caption; `spec`: file_name, mime_type, width, ...
        Returns the call sequence number to read replies after."""
        since = await self.tg.last_seq()
        await self.tg.post("message", {"chat_id": self.chat_id, "user_id": self.user_id, "caption": caption,
                                       kind: {"data": base64.b64encode(data).decode(), **spec}})
        return since

    async def tap(self, message_id: int, data: str) -> int:
        since = await self.tg.last_seq()
        await self.tg.post("callback", {"chat_id": self.chat_id, "user_id": self.user_id, "data": data,
                                        "message_id": message_id})
        return since

    async def press(self, message_id: int, data: str, timeout: float = 15.0) -> dict[str, Any]:
        """Tap a button and return the bot's answer to this very press, however many others it answers meanwhile."""
        since = await self.tg.last_seq()
        query_id = (await self.tg.post("callback", {"chat_id": self.chat_id, "user_id": self.user_id, "data": data,
                                                    "message_id": message_id}))["callback_query_id"]
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            call = await self.tg.wait_call("answerCallbackQuery", None, since, left, required=False)
            if call.get("params", {}).get("callback_query_id") == query_id:
                return dict(call["params"])
            since = call.get("seq", since)
        raise TimeoutError(f"the bot did not answer the press of {data!r} in chat {self.chat_id} within {timeout}s")

    async def hostile(self, shape: str) -> int:
        """Inject one update of a hostile shape (fake_telegram.HOSTILE_SHAPES) from this user; its update_id."""
        body = {"shape": shape, "chat_id": self.chat_id, "user_id": self.user_id}
        return int((await self.tg.post("hostile", body))["update_id"])

    async def pick_node(self, node_id: str) -> None:
        """/node, then that node's button, as a user picks the node for this chat; `/node <node_id>` when the list
        (the 20 most relevant) does not show it, as it may not on a stack many cases have added nodes to."""
        listing = await self.sent(await self.say("/node"))
        buttons = [b["callback_data"] for row in listing["reply_markup"]["inline_keyboard"] for b in row
                   if b["callback_data"].endswith(f":{node_id}")]
        if buttons:
            alert = await self.alert(await self.tap(listing["message_id"], buttons[0]))
            assert "selected" in alert["text"], alert
            return
        picked = await self.sent(await self.say(f"/node {node_id}"))
        assert picked["text"] == f"Node {node_id} selected for this chat.", picked

    async def reply(self, since: int, timeout: float = 15.0) -> dict[str, Any]:
        """The first message the bot sent to this chat after `since`."""
        return (await self.tg.wait_call("sendMessage", self.chat_id, since, timeout))["params"]

    async def sent(self, since: int, timeout: float = 15.0) -> dict[str, Any]:
        """The Message the bot's first sendMessage after `since` created (message_id, text, reply_markup)."""
        return dict((await self.tg.wait_call("sendMessage", self.chat_id, since, timeout))["response"]["result"])

    async def alert(self, since: int, timeout: float = 15.0) -> dict[str, Any]:
        return (await self.tg.wait_call("answerCallbackQuery", None, since, timeout))["params"]

    async def messages(self) -> list[dict[str, Any]]:
        """The chat as the user sees it now: every bot message with its latest text and buttons."""
        return list((await self.tg.get(f"chat/{self.chat_id}"))["messages"])

    async def shown(self, message_id: int) -> dict[str, Any]:
        return next(m for m in await self.messages() if m["message_id"] == message_id)

    async def until_shown(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until some bot message in the chat satisfies `predicate` (edits included)."""
        deadline = time.monotonic() + timeout
        while True:
            for m in await self.messages():
                if m.get("from_bot") and predicate(m):
                    return m
            if time.monotonic() > deadline:
                raise TimeoutError(f"no bot message matched in chat {self.chat_id}: {await self.messages()}")
            await self.tg.wait_call(None, self.chat_id, await self.tg.last_seq(), 1.0, required=False)


    async def turn(self, text: str, expect: str, timeout: float = 30.0) -> dict[str, Any]:
        """Send plain text; wait for the bot's final answer containing `expect` (placeholder edits skipped)."""
        since = await self.say(text)
        placeholder = await self.sent(since)
        assert placeholder["text"].startswith("⏳"), placeholder
        return await self.until_shown(lambda m: expect in m["text"] and "⏳" not in m["text"], timeout)


USAGE_MARK = "\n\n🔢 "  # the turn's token usage line the bot puts under an answer (P1-13)


def without_usage(text: str) -> str:
    """An answer's own text: without the token usage line under it."""
    return text.partition(USAGE_MARK)[0]


def button(message: dict[str, Any], label: str) -> str:
    """The callback data of the button whose label ends with `label`."""
    return next(b["callback_data"] for row in message["reply_markup"]["inline_keyboard"] for b in row
                if b["text"].endswith(label))


class FakeTelegram:
    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http, self.port, self.base = http, port, f"http://127.0.0.1:{port}/_fake/"

    def user(self, user_id: int, chat_id: int | None = None) -> TelegramUser:
        return TelegramUser(self, user_id, chat_id)

    async def post(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        # A stream: a user's file of megabytes as one bytes body would make aiohttp warn that it blocks the loop.
        raw = io.BytesIO(json.dumps(body).encode())
        async with self.http.post(self.base + action, data=raw, headers={"Content-Type": "application/json"}) as resp:
            data = await resp.json()
            assert resp.status == 200, f"fake telegram {action}: {resp.status} {data}"
            return dict(data)

    async def get(self, action: str, **params: Any) -> dict[str, Any]:
        async with self.http.get(self.base + action, params={k: str(v) for k, v in params.items()},
                                 timeout=aiohttp.ClientTimeout(total=70)) as resp:
            return dict(await resp.json())

    async def last_seq(self) -> int:
        return int((await self.get("calls", since=10**12))["last_seq"])

    async def calls(self, method: str | None = None, chat_id: int | None = None, since: int = 0) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"since": since}
        if method:
            params["method"] = method
        if chat_id is not None:
            params["chat_id"] = chat_id
        return list((await self.get("calls", **params))["calls"])

    async def wait_call(self, method: str | None, chat_id: int | None, since: int, timeout: float,
                        required: bool = True) -> dict[str, Any]:
        """The first successful call of `method` (to `chat_id`) after `since`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            params: dict[str, Any] = {"since": since, "wait": round(min(left, 60), 2)}
            if method:
                params["method"] = method
            if chat_id is not None:
                params["chat_id"] = chat_id
            for call in (await self.get("calls", **params))["calls"]:
                since = max(since, call["seq"])
                if call["status"] == 200:
                    return dict(call)
        if required:
            raise TimeoutError(f"the bot made no successful {method or 'call'} to chat {chat_id} within {timeout}s")
        return {}

    async def wait_polling(self, timeout: float) -> None:
        """Until the bot holds a getUpdates open: it is listening. (A long poll is recorded as a call only
        when it answers, up to the bot's poll timeout later.)"""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if (await self.get("polling", wait=round(min(left, 60), 2)))["polling"]:
                return
        raise TimeoutError(f"the bot did not poll for updates within {timeout}s")

    async def file(self, file_id: str) -> bytes:
        """A file the bot uploaded (sendDocument), as the fake Bot API kept it."""
        async with self.http.get(self.base + f"file/{file_id}") as resp:
            assert resp.status == 200, f"fake telegram has no file {file_id}: {resp.status}"
            return await resp.read()

    async def fault(self, method: str, **fault: Any) -> None:
        """status=, retry_after=, delay=, body= (answered as-is instead of JSON), count= (default 1),
        with_parse_mode=True (only calls with formatted text count)."""
        await self.post("faults", {"method": method, **fault})

    async def clear_faults(self) -> None:
        async with self.http.delete(self.base + "faults"):
            pass
