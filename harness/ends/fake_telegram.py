"""Fake Telegram Bot API (the subset python-telegram-bot uses) on a real aiohttp server.
Bot calls go to `/bot<token>/<method>`; tests inject updates, read calls and set faults under `/_fake/`.
Text with parse_mode HTML is parsed as Telegram parses it (tg_entities.py): its entities are kept, a malformed
one gets Telegram's "can't parse entities" answer, and the 4,096-character limit applies after parsing.
Documents arrive as multipart uploads, as to Telegram, and are kept: `GET /_fake/file/<file_id>` reads one.
A user's document, photo or voice note (`POST /_fake/message` with `document`/`photo`/`voice`: base64 `data`) is
served as Telegram serves it: `getFile` gives its `file_path` (400 "file is too big" past 20 MB), and
`GET /file/bot<token>/<file_path>` its bytes."""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import json
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp import web

from harness.ends.tg_entities import EntityError, parse_html

Json = dict[str, Any]
# Keys Telegram reads as plain strings even when they look like JSON (a text "42" must stay "42").
TEXT_KEYS = frozenset({"text", "caption", "callback_query_id", "data", "url", "parse_mode", "action", "name",
                       "inline_message_id", "secret_token", "language_code", "description", "query", "title"})
COMMAND = re.compile(r"^/[A-Za-z0-9_]{1,32}(@[A-Za-z0-9_]{3,64})?(?=\s|$)")
TRUE_METHODS = ("close", "logOut", "sendChatAction")  # answered `true`, no state the tests read
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
WEBHOOK_RETRY_S = 0.5       # Telegram retries an update its webhook did not take; here, soon
WEBHOOK_ATTEMPTS = 120      # and gives up on it after a while (Telegram: 24 h), so one bad update cannot wedge the rest
NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and reply markup are "
                "exactly the same as a current content and reply markup of the message")
ERROR_STATUSES = frozenset(s.value for s in HTTPStatus if 400 <= s.value <= 599)
MAX_TEXT, MAX_CAPTION = 4096, 1024      # characters after entity parsing, as Telegram counts them (code points)
MAX_UPLOAD = 50 * 1024 * 1024           # Telegram's limit for a file a bot uploads
MAX_DOWNLOAD = 20 * 1024 * 1024         # Telegram's limit for a file a bot downloads (getFile)
MEDIA = ("document", "photo", "voice")  # what a user's message may carry besides text


def log(op: str, **kv: Any) -> None:
    parts = [f"op={op}"]
    for key, value in kv.items():
        if value is not None:
            text = (value if isinstance(value, str) else json.dumps(value, separators=(",", ":")))[:80]
            parts.append(f"{key}={json.dumps(text) if not text or ' ' in text or '=' in text else text}")
    print(" ".join(parts), file=sys.stderr, flush=True)


def _hostile(shape: str, message: Json) -> Json:
    """One update Telegram could send (or a broken proxy could pass on) that a bot must survive, built from a
    good `message`: a field missing, a field of the wrong type, or a kind the bot never subscribed to."""
    m = json.loads(json.dumps(message))
    if shape == "no_date":
        del m["date"]
    elif shape == "entity_no_offset":
        m.setdefault("entities", [{"type": "bot_command", "length": 1}])[0].pop("offset", None)
    elif shape == "no_from":  # a channel's or an anonymous sender's message
        del m["from"]
    elif shape == "wrong_type":
        m["date"] = "yesterday"
    elif shape == "edited_channel_post":
        return {"edited_channel_post": m}
    elif shape == "unknown_kind":  # a key no Bot API version has
        return {"made_up_kind": m}
    return {"message": m}


# `callback_no_message` is a button on an inline message: the query has inline_message_id and no message.
HOSTILE_SHAPES = ("no_date", "entity_no_offset", "no_from", "wrong_type", "edited_channel_post", "unknown_kind",
                  "callback_no_message")


class TgError(Exception):
    """An error answered with a real HTTP status: PTB picks its exception from the status, not from `ok`."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.body: Json = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            self.body["parameters"] = {"retry_after": retry_after}


@dataclass
class Msg:
    message_id: int
    chat_id: int
    date: int
    text: str
    sender: Json
    from_bot: bool
    reply_markup: Json | None = None
    entities: list[Json] | None = None
    document: Json | None = None  # a document message: `text` is its caption, `entities` the caption's
    media: Json | None = None  # a user's photo (a list of sizes) or voice note, by its key: `text` is the caption
    edits: list[Json] = field(default_factory=list)
    original: Json = field(default_factory=dict)
    deleted: bool = False

    def view(self) -> Json:
        return {"message_id": self.message_id, "from_bot": self.from_bot, "text": self.text, "date": self.date,
                "entities": self.entities or [], "document": self.document,
                "reply_markup": self.reply_markup, "original": self.original, "edits": self.edits}


def _decode(key: str, value: Any) -> Any:
    # PTB form-encodes numbers, bools and complex values (reply_markup, commands) as JSON strings.
    if not isinstance(value, str) or key in TEXT_KEYS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


@dataclass
class Upload:
    filename: str
    content_type: str
    data: bytes


async def read_params(request: web.Request) -> tuple[Json, dict[str, Upload]]:
    """The call's parameters, and its uploaded files by field name (a parameter shows a file as its name and size)."""
    raw: Json = dict(request.query)
    files: dict[str, Upload] = {}
    if request.content_type == "application/json":
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("JSON body must be an object")
        raw.update(body)
    else:  # form-encoded or multipart; any other body reads as empty
        for key, value in (await request.post()).items():
            if isinstance(value, web.FileField):
                files[key] = Upload(value.filename, value.content_type, value.file.read())
                raw[key] = {"filename": value.filename, "size": len(files[key].data)}
            else:
                raw[key] = value
    return {k: _decode(k, v) for k, v in raw.items()}, files


def _formatted(params: Json, key: str, limit: int, too_long: str) -> tuple[str, list[Json] | None]:
    """`params[key]` as Telegram shows it: parsed per parse_mode, then checked against `limit`."""
    text, mode = params.get(key), params.get("parse_mode")
    if not isinstance(text, str):
        text = ""
    entities: list[Json] | None = None
    if isinstance(mode, str) and mode:
        if mode.lower() != "html":
            # Telegram reads MarkdownV2 and Markdown too; this fake does not, so such a call fails loudly.
            raise TgError(400, f"Bad Request: parse_mode {mode} is not implemented by the fake Bot API; use HTML")
        try:
            text, entities = parse_html(text)
        except EntityError as exc:
            raise TgError(400, f"Bad Request: can't parse entities: {exc}") from None
    if not text.strip():
        raise TgError(400, f"Bad Request: message {key} is empty")
    if len(text) > limit:
        raise TgError(400, too_long)
    return text, entities or None


def _text(params: Json) -> tuple[str, list[Json] | None]:
    return _formatted(params, "text", MAX_TEXT, "Bad Request: message is too long")


def _markup(params: Json) -> Json | None:
    markup = params.get("reply_markup")
    if markup is not None and not isinstance(markup, dict):
        raise TgError(400, "Bad Request: can't parse reply keyboard markup JSON object")
    for row in (markup or {}).get("inline_keyboard", []):
        if any(len(str(b.get("callback_data", "")).encode()) > 64 for b in row):
            raise TgError(400, "Bad Request: BUTTON_DATA_INVALID")
    return markup


def _need(body: Json, key: str, kind: type) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):  # bool is an int, but never a valid id
        raise TypeError(f"'{key}' must be {kind.__name__}")
    return value


class FakeTelegram:
    def __init__(self, token: str, username: str = "relay_test_bot") -> None:
        self.token = token
        bot_id = int(token.split(":")[0]) if token.split(":")[0].isdigit() else 100000001
        self.bot_user: Json = {"id": bot_id, "is_bot": True, "first_name": "Relay Test Bot", "username": username}
        self.seq = self.update_id = self.query_id = self.poll_gen = 0  # never reset: tests and bots keep them
        self.next_mid: dict[int, int] = {}  # survives reset so a bot holding old ids never hits a reused one
        self.commands: list[Json] = []
        self.closing = False
        self.polls_waiting = 0  # getUpdates requests being held open: the bot is listening
        self.webhook: Json | None = None  # {"url", "secret_token"} once the bot set one: updates are POSTed there
        self.deliverer: asyncio.Task[None] | None = None
        self.changed = asyncio.Condition()  # wakes long polls: new update, new call, newer poll, shutdown
        self.handlers = {n.lower(): n for n in TRUE_METHODS + (
            "getMe", "setWebhook", "deleteWebhook", "getUpdates", "sendMessage", "editMessageText", "editMessageReplyMarkup",
            "answerCallbackQuery", "deleteMessage", "setMyCommands", "getMyCommands", "sendDocument", "getFile")}
        self.reset()

    def reset(self) -> None:
        self.calls: list[Json] = []
        self.updates: list[Json] = []
        self.chats: dict[int, dict[int, Msg]] = {}
        self.alerts: dict[int, list[Json]] = {}
        self.queries: dict[str, tuple[int, int]] = {}  # unanswered callback id -> (chat_id, message_id)
        self.faults: list[Json] = []
        self.files: dict[str, Upload] = {}  # file_id -> what a bot uploaded
        self.uploads: dict[str, Upload] = {}  # the current call's uploaded files, by field name
        self.paths: dict[str, str] = {}  # file_path (getFile) -> file_id, for /file/bot<token>/<file_path>

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: predicate() or self.closing), timeout)
            except TimeoutError:
                pass

    # ---- bot side -------------------------------------------------------------------------------
    async def bot_api(self, request: web.Request) -> web.Response:
        method = self.handlers.get(request.match_info["method"].lower(), request.match_info["method"])
        params: Json = {}
        uploads: dict[str, Upload] = {}
        parse_error: TgError | None = None
        try:  # read before any delay: a bot that gives up waiting must not take its body with it
            params, uploads = await read_params(request)
        except ValueError as exc:
            parse_error = TgError(400, f"Bad Request: can't parse request body: {exc}")
        # `with_parse_mode` faults hit only calls that carry formatted text (one that rejects their entities).
        fault = next((f for f in self.faults if f["method"] in (method, "*")
                      and (not f.get("with_parse_mode") or params.get("parse_mode"))), None)
        if fault is not None:
            fault["count"] -= 1
            if fault["count"] <= 0:
                self.faults.remove(fault)
        # A slow reply still takes effect, like a real Telegram call whose client timed out.
        await asyncio.sleep(fault.get("delay", 0.0) if fault else 0.0)
        if fault is not None and "body" in fault:  # a broken proxy's page in place of Telegram's JSON
            return await self._record(request, method, params, fault.get("status", 200), {"raw": fault["body"]},
                                web.Response(text=fault["body"], status=fault.get("status", 200), content_type="text/html"))
        try:
            if parse_error is not None:
                raise parse_error
            if request.match_info["token"] != self.token:
                raise TgError(401, "Unauthorized")
            if fault is not None and fault.get("status") == 429:
                raise TgError(429, f"Too Many Requests: retry after {fault['retry_after']}", fault["retry_after"])
            if fault is not None and "status" in fault:
                raise TgError(fault["status"], fault.get("description") or HTTPStatus(fault["status"]).phrase)
            if method.lower() not in self.handlers:
                raise TgError(404, "Not Found")
            try:
                self.uploads = uploads  # read by a method handler before its first await
                result = True if method in TRUE_METHODS else await getattr(self, "m_" + method)(params)
            except (ValueError, TypeError, AttributeError) as exc:  # malformed params: a 400, never a traceback
                raise TgError(400, f"Bad Request: {exc}") from exc
            status, body = 200, {"ok": True, "result": result}
        except TgError as exc:
            status, body = exc.status, exc.body
        return await self._record(request, method, params, status, body, web.json_response(body, status=status))

    async def _record(self, request: web.Request, method: str, params: Json, status: int, body: Json,
                response: web.Response) -> web.Response:
        self.seq += 1
        # client_gone: the bot gave up (timeout, cancelled poll) before the answer, so it never saw it.
        self.calls.append({"seq": self.seq, "time": time.time(), "method": method, "params": params,
                           "status": status, "response": body, "client_gone": request.transport is None})
        log("call", seq=self.seq, method=method, chat_id=params.get("chat_id"),
            message_id=params.get("message_id"), status=status, text=params.get("text"))
        await self._notify()
        return response

    def _message_json(self, m: Msg) -> Json:
        chat = ({"id": m.chat_id, "type": "private", "first_name": "User"} if m.chat_id > 0
                else {"id": m.chat_id, "type": "group", "title": f"Group {m.chat_id}"})
        out: Json = {"message_id": m.message_id, "date": m.date, "chat": chat, "from": m.sender}
        if m.document is not None or m.media:
            if m.document is not None:
                out["document"] = m.document
            out.update(m.media or {})
            if m.text:
                out["caption"] = m.text
            if m.entities:
                out["caption_entities"] = m.entities
        else:
            out["text"] = m.text
            if m.entities:
                out["entities"] = m.entities
        if m.edits:
            out["edit_date"] = m.edits[-1]["date"]
        if m.reply_markup and "inline_keyboard" in m.reply_markup:  # Telegram echoes only inline keyboards
            out["reply_markup"] = m.reply_markup
        return out

    def _new_msg(self, chat_id: int, text: str, sender: Json, **extra: Any) -> Msg:
        mid = self.next_mid.get(chat_id, 1)
        self.next_mid[chat_id] = mid + 1  # one id sequence per chat, shared by user and bot, as in Telegram
        msg = Msg(mid, chat_id, int(time.time()), text, sender, sender is self.bot_user, **extra)
        msg.original = {"text": text, "reply_markup": msg.reply_markup}
        self.chats.setdefault(chat_id, {})[mid] = msg
        return msg

    def _find(self, params: Json, what: str) -> Msg:
        msg = self.chats.get(_need(params, "chat_id", int), {}).get(_need(params, "message_id", int))
        if msg is None or msg.deleted:
            raise TgError(400, f"Bad Request: message to {what} not found")
        return msg

    async def m_getMe(self, p: Json) -> Json:
        return self.bot_user

    async def m_setWebhook(self, p: Json) -> bool:
        url = _need(p, "url", str)
        self.webhook = {"url": url, "secret_token": p.get("secret_token")} if url else None  # "" removes it
        if self.webhook is not None and self.deliverer is None:
            self.deliverer = asyncio.create_task(self._deliver())
        await self._notify()
        return True

    async def m_deleteWebhook(self, p: Json) -> bool:
        self.webhook = None
        if p.get("drop_pending_updates") is True:
            self.updates.clear()
        return True

    async def _deliver(self) -> None:
        """As Telegram does with a webhook set: each update POSTed in order, with the secret token header; one not
        answered 2xx is tried again, up to WEBHOOK_ATTEMPTS times."""
        attempts = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            while not self.closing:
                await self._wait(lambda: bool(self.updates and self.webhook), 60.0)
                if not (self.updates and self.webhook):
                    continue
                update, hook = self.updates[0], self.webhook
                headers = {SECRET_HEADER: str(hook["secret_token"])} if hook.get("secret_token") else {}
                try:
                    async with http.post(hook["url"], json=update, headers=headers) as resp:
                        status: int | None = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    status = None
                attempts += 1
                log("webhook", update_id=update["update_id"], status=status, attempt=attempts)
                if (status is not None and 200 <= status < 300) or attempts >= WEBHOOK_ATTEMPTS:
                    if self.updates and self.updates[0] is update:
                        self.updates.pop(0)
                    attempts = 0
                else:
                    await asyncio.sleep(WEBHOOK_RETRY_S)

    async def m_getUpdates(self, p: Json) -> list[Json]:
        if self.webhook is not None:
            raise TgError(409, "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to "
                               "delete the webhook first")
        offset, limit = int(p.get("offset") or 0), min(max(int(p.get("limit") or 100), 1), 100)
        if offset > 0:  # an offset confirms every update before it
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        self.poll_gen += 1
        gen = self.poll_gen
        self.polls_waiting += 1
        try:
            await self._notify()  # an older poll still waiting gets 409, as from Telegram
            # A new getUpdates fault ends a held poll early (an empty answer is always valid), so it applies now.
            await self._wait(lambda: bool(self.updates) or gen != self.poll_gen
                             or any(f["method"] == "getUpdates" for f in self.faults), float(p.get("timeout") or 0))
        finally:
            self.polls_waiting -= 1
        if gen != self.poll_gen:
            raise TgError(409, "Conflict: terminated by other getUpdates request; "
                               "make sure that only one bot instance is running")
        return self.updates[:limit]

    async def m_sendMessage(self, p: Json) -> Json:
        text, entities = _text(p)
        msg = self._new_msg(_need(p, "chat_id", int), text, self.bot_user, reply_markup=_markup(p), entities=entities)
        return self._message_json(msg)

    async def m_sendDocument(self, p: Json) -> Json:
        """A multipart upload, kept under a new file_id; a string `document` must be a file_id sent before."""
        chat_id, upload = _need(p, "chat_id", int), self.uploads.get("document")
        if upload is None:
            known = self.files.get(str(p.get("document") or ""))
            if known is None:
                raise TgError(400, "Bad Request: there is no document in the request" if not p.get("document")
                              else "Bad Request: wrong file identifier/HTTP URL specified")
            upload = known
        if len(upload.data) > MAX_UPLOAD:
            raise TgError(413, "Request Entity Too Large")
        if not upload.data:
            raise TgError(400, "Bad Request: file must be non-empty")
        caption, entities = (_formatted(p, "caption", MAX_CAPTION, "Bad Request: message caption is too long")
                             if str(p.get("caption") or "").strip() else ("", None))
        file_id = f"doc{len(self.files) + 1}_{self.seq + 1}"
        self.files[file_id] = upload
        document = {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_name": upload.filename,
                    "mime_type": upload.content_type, "file_size": len(upload.data)}
        msg = self._new_msg(chat_id, caption, self.bot_user, reply_markup=_markup(p), entities=entities,
                            document=document)
        return self._message_json(msg)

    async def m_getFile(self, p: Json) -> Json:
        """As Telegram: the file's path for the download URL; past 20 MB a bot cannot download it."""
        file_id = str(_need(p, "file_id", str))
        upload = self.files.get(file_id)
        if upload is None:
            raise TgError(400, "Bad Request: invalid file_id")
        if len(upload.data) > MAX_DOWNLOAD:
            raise TgError(400, "Bad Request: file is too big")
        folder = {"image": "photos", "audio": "voice"}.get(upload.content_type.split("/")[0], "documents")
        path = f"{folder}/file_{file_id}{os.path.splitext(upload.filename)[1]}"
        self.paths[path] = file_id
        return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(upload.data), "file_path": path}

    async def download(self, request: web.Request) -> web.Response:
        """`/file/bot<token>/<file_path>`: a file's bytes, as Telegram's file server sends them."""
        file_id = self.paths.get(request.match_info["path"])
        if request.match_info["token"] != self.token or file_id is None:
            return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)
        log("download", file_id=file_id, size=len(self.files[file_id].data))
        return web.Response(body=self.files[file_id].data, content_type="application/octet-stream")

    async def _edit(self, p: Json, method: str, new: tuple[str, list[Json] | None] | None) -> Json:
        msg = self._find(p, "edit")
        if not msg.from_bot or msg.document is not None:
            raise TgError(400, "Bad Request: message can't be edited")
        # no reply_markup removes the keyboard; editMessageReplyMarkup keeps the text and its entities
        (text, entities), markup = (msg.text, msg.entities) if new is None else new, _markup(p)
        if text == msg.text and entities == msg.entities and markup == msg.reply_markup:
            raise TgError(400, NOT_MODIFIED)
        msg.text, msg.entities, msg.reply_markup = text, entities, markup
        msg.edits.append({"method": method, "text": text, "entities": entities or [], "reply_markup": markup,
                          "date": int(time.time())})
        return self._message_json(msg)

    async def m_editMessageText(self, p: Json) -> Json:
        return await self._edit(p, "editMessageText", _text(p))

    async def m_editMessageReplyMarkup(self, p: Json) -> Json:
        return await self._edit(p, "editMessageReplyMarkup", None)

    async def m_answerCallbackQuery(self, p: Json) -> bool:
        query_id, text = str(p.get("callback_query_id", "")), str(p.get("text") or "")
        if query_id not in self.queries:  # unknown or already answered
            raise TgError(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
        if len(text) > 200:
            raise TgError(400, "Bad Request: MESSAGE_TOO_LONG")
        chat_id, message_id = self.queries.pop(query_id)
        self.alerts.setdefault(chat_id, []).append({"callback_query_id": query_id, "message_id": message_id,
                                                    "text": text, "show_alert": p.get("show_alert") is True})
        return True

    async def m_deleteMessage(self, p: Json) -> bool:
        self._find(p, "delete").deleted = True
        return True

    async def m_setMyCommands(self, p: Json) -> bool:
        if not isinstance(p.get("commands"), list):
            raise TgError(400, "Bad Request: can't parse commands JSON object")
        self.commands = p["commands"]
        return True

    async def m_getMyCommands(self, p: Json) -> list[Json]:
        return self.commands

    # ---- control side (tests) -------------------------------------------------------------------
    async def _push(self, update: Json) -> int:
        self.update_id += 1
        self.updates.append({"update_id": self.update_id, **update})
        await self._notify()
        return self.update_id

    @staticmethod
    def _user(body: Json) -> Json:
        user = {"id": _need(body, "user_id", int), "is_bot": False, "first_name": str(body.get("first_name") or "User")}
        return {**user, "username": str(body["username"])} if body.get("username") else user

    @staticmethod
    def _entities(text: str) -> list[Json] | None:
        cmd = COMMAND.match(text)  # entity lengths count UTF-16 code units, as Telegram's do
        return [{"type": "bot_command", "offset": 0, "length": len(cmd[0].encode("utf-16-le")) // 2}] if cmd else None

    def _user_file(self, kind: str, spec: Json) -> tuple[Json | None, Json | None]:
        """A user's document, photo or voice note, kept as Telegram keeps it: the message's field for it."""
        data = base64.b64decode(_need(spec, "data", str))
        mime = str(spec.get("mime_type")
                   or {"photo": "image/jpeg", "voice": "audio/ogg"}.get(kind, "application/octet-stream"))
        name = str(spec.get("file_name") or {"photo": "photo.jpg", "voice": "voice.oga"}.get(kind, "file"))
        file_id = f"{kind}{len(self.files) + 1}_{self.seq}"
        self.files[file_id] = Upload(name, mime, data)
        ids: Json = {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(data)}
        if kind == "document":
            return {**ids, "file_name": name, "mime_type": mime}, None
        if kind == "photo":  # Telegram sends sizes, smallest first; the test's image is the largest
            return None, {"photo": [{**ids, "width": int(spec.get("width", 640)), "height": int(spec.get("height", 480))}]}
        return None, {"voice": {**ids, "duration": int(spec.get("duration", 2)), "mime_type": mime}}

    async def c_message(self, body: Json) -> Json:
        chat_id = _need(body, "chat_id", int)
        kind = next((k for k in MEDIA if k in body), None)
        if kind is None:
            text = _need(body, "text", str)
            msg = self._new_msg(chat_id, text, self._user(body), entities=self._entities(text))
        else:
            document, media = self._user_file(kind, _need(body, kind, dict))
            msg = self._new_msg(chat_id, str(body.get("caption") or ""), self._user(body), document=document,
                                media=media)
            text = f"[{kind}] {msg.text}"
        update_id = await self._push({"message": self._message_json(msg)})
        log("inject", kind="message", update_id=update_id, chat_id=chat_id, text=text)
        return {"update_id": update_id, "message_id": msg.message_id}

    async def c_callback(self, body: Json) -> Json:
        chat_id, message_id, data = _need(body, "chat_id", int), _need(body, "message_id", int), _need(body, "data", str)
        msg, user = self.chats.get(chat_id, {}).get(message_id), self._user(body)
        if msg is None or msg.deleted or not msg.from_bot:
            raise ValueError(f"no visible bot message {message_id} in chat {chat_id}")
        if len(data.encode()) > 64:
            raise ValueError("Telegram limits callback data to 64 bytes")
        self.query_id += 1
        query_id = str(self.query_id)
        self.queries[query_id] = (chat_id, message_id)
        update_id = await self._push({"callback_query": {"id": query_id, "from": user, "chat_instance": str(chat_id),
                                                         "data": data, "message": self._message_json(msg)}})
        log("inject", kind="callback", update_id=update_id, chat_id=chat_id, message_id=message_id, data=data)
        return {"update_id": update_id, "callback_query_id": query_id}

    async def c_hostile(self, body: Json) -> Json:
        """One update of a hostile shape (HOSTILE_SHAPES) from `user_id` in `chat_id`; a message's `text`
        defaults to /help, so a bot that could read it would answer."""
        shape, chat_id, user = _need(body, "shape", str), _need(body, "chat_id", int), self._user(body)
        if shape not in HOSTILE_SHAPES:
            raise ValueError(f"unknown hostile shape {shape!r}; one of {', '.join(HOSTILE_SHAPES)}")
        if shape == "callback_no_message":
            self.query_id += 1
            query_id = str(self.query_id)
            self.queries[query_id] = (chat_id, 0)  # its answer lands in this chat's alerts, under message 0
            update = {"callback_query": {"id": query_id, "from": user, "chat_instance": str(chat_id),
                                         "inline_message_id": f"inline{query_id}", "data": str(body.get("data") or "n:x")}}
        else:
            text = str(body.get("text") or "/help")
            update = _hostile(shape, self._message_json(self._new_msg(chat_id, text, user, entities=self._entities(text))))
        update_id = await self._push(update)
        log("inject", kind=shape, update_id=update_id, chat_id=chat_id)
        return {"update_id": update_id}

    async def c_faults(self, body: Json) -> Json:
        fault: Json = {"method": _need(body, "method", str), "count": int(body.get("count", 1))}
        if "status" in body:
            fault["status"] = _need(body, "status", int)
            if fault["status"] not in ERROR_STATUSES:
                raise ValueError("'status' must be an HTTP error status (400-599)")
            if fault["status"] == 429:
                fault["retry_after"] = int(body.get("retry_after", 1))
            if body.get("description"):
                fault["description"] = str(body["description"])
        if "delay" in body:
            fault["delay"] = float(body["delay"])
        if "body" in body:  # answered as-is (text/html), with `status` or 200: a proxy's page, not Telegram's JSON
            fault["body"] = str(body["body"])
        if body.get("with_parse_mode"):  # only calls with a parse_mode count (and use up the fault)
            fault["with_parse_mode"] = True
        if fault["count"] < 1 or fault.get("delay", 0.0) < 0 or not {"status", "delay", "body"} & fault.keys():
            raise ValueError("a fault needs 'status', 'body' and/or 'delay' >= 0, and 'count' >= 1")
        self.faults.append(fault)
        await self._notify()
        log("fault", **fault)
        return {"faults": self.faults}

    async def c_calls(self, q: Mapping[str, str]) -> Json:
        since, method, chat_id = int(q.get("since", 0)), q.get("method"), q.get("chat_id")

        def matching() -> list[Json]:
            # Calls are kept in seq order: start past `since` rather than scan them all, since every new call
            # wakes every waiting poll (a soak's chat ops keep dozens waiting over tens of thousands of calls).
            start = bisect.bisect_right(self.calls, since, key=lambda c: int(c["seq"]))
            return [c for c in self.calls[start:] if method in (None, c["method"])
                    and chat_id in (None, str(c["params"].get("chat_id")))]
        # `wait` long-polls until a matching call exists, so tests need no sleep loops.
        await self._wait(lambda: bool(matching()), min(float(q.get("wait", 0)), 60.0))
        return {"calls": matching(), "last_seq": self.seq}

    def c_chat(self, chat_id: int) -> Json:
        msgs = sorted(self.chats.get(chat_id, {}).values(), key=lambda m: m.message_id)
        return {"chat_id": chat_id, "messages": [m.view() for m in msgs if not m.deleted],
                "deleted": [m.message_id for m in msgs if m.deleted], "alerts": self.alerts.get(chat_id, [])}

    async def control(self, request: web.Request) -> web.Response:
        route, q = (request.method, request.match_info["action"]), request.query
        try:
            body = await request.json() if request.method == "POST" and request.can_read_body else {}
            if not isinstance(body, dict):
                raise TypeError("body must be a JSON object")
            if route == ("POST", "message"):
                result = await self.c_message(body)
            elif route == ("POST", "callback"):
                result = await self.c_callback(body)
            elif route == ("POST", "hostile"):
                result = await self.c_hostile(body)
            elif route == ("POST", "faults"):
                result = await self.c_faults(body)
            elif route == ("DELETE", "faults"):
                self.faults.clear()
                result = {"faults": []}
            elif route == ("GET", "faults"):
                result = {"faults": self.faults}
            elif route == ("GET", "calls"):
                result = await self.c_calls(q)
            elif route == ("POST", "reset"):
                self.reset()
                result = {"ok": True, "last_seq": self.seq}
            elif route == ("GET", "updates/pending"):
                result = {"pending": len(self.updates)}
            elif route == ("GET", "polling"):  # `wait` long-polls until the bot holds a getUpdates open
                await self._wait(lambda: self.polls_waiting > 0, min(float(q.get("wait", 0)), 60.0))
                result = {"polling": self.polls_waiting > 0}
            elif route[0] == "GET" and route[1].startswith("chat/"):
                result = self.c_chat(int(route[1].removeprefix("chat/")))
            elif route[0] == "GET" and route[1].startswith("file/"):
                upload = self.files.get(route[1].removeprefix("file/"))
                if upload is None:
                    raise web.HTTPNotFound()
                return web.Response(body=upload.data, content_type="application/octet-stream",
                                    headers={"X-File-Name": upload.filename})
            else:
                raise web.HTTPNotFound()
            return web.json_response(result)
        except (ValueError, TypeError) as exc:
            return web.json_response({"ok": False, "error_code": 400, "description": str(exc)}, status=400)

    async def on_shutdown(self, app: web.Application) -> None:
        self.closing = True  # release long polls now instead of holding shutdown for their `timeout`
        await self._notify()
        if self.deliverer is not None:
            self.deliverer.cancel()


@web.middleware
async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) \
        -> web.StreamResponse:
    """JSON errors for everything, never a traceback to the client."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return web.json_response({"ok": False, "error_code": exc.status, "description": exc.reason}, status=exc.status)
    except Exception as exc:  # noqa: BLE001 - the client must always get a JSON answer
        log("error", path=request.path, error=repr(exc))
        return web.json_response({"ok": False, "error_code": 500, "description": "Internal Server Error"}, status=500)


FAKE_KEY = web.AppKey("fake_telegram", FakeTelegram)


def build_app(token: str, username: str = "relay_test_bot") -> web.Application:
    fake = FakeTelegram(token, username)
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024 * 1024)
    app[FAKE_KEY] = fake
    app.router.add_route("*", "/bot{token}/{method}", fake.bot_api)
    app.router.add_route("GET", "/file/bot{token}/{path:.+}", fake.download)
    app.router.add_route("*", r"/_fake/{action:(updates/pending|chat/[^/]+|file/[^/]+|[a-z]+)}", fake.control)
    app.on_shutdown.append(fake.on_shutdown)
    return app


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(build_app(args.token, args.username), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    port = runner.addresses[0][1]
    log("ready", host=args.host, port=port, pid=os.getpid())  # the harness reads the port from this line
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    log("shutdown")
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--username", default="relay_test_bot")
    args = parser.parse_args(argv)
    # The bot token comes by environment, never argv (H-10): a process listing would show it.
    args.token = os.environ.get("FAKE_TELEGRAM_TOKEN")
    if not args.token:
        parser.error("set FAKE_TELEGRAM_TOKEN to the bot token this fake Bot API accepts")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
