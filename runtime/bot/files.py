"""Files in and out of a chat's thread directory: /file get, /diff, the documents and photos users send, and voice
notes (transcribed on the node).

The bot never touches the node's disk: every byte goes through the manager to the node (`/api/files/*`), which
checks every path and saves uploads atomically (runtime/node/files.py). Files travel in chunks of FILE_CHUNK_BYTES,
so every control body and frame stays within 1 MiB; a diff and a voice note go whole, within MAX_FILE_BYTES. Past a
limit (the bot's or the node's file_max_bytes) the user reads which one.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any, Final

from telegram import Bot, Message
from telegram.error import BadRequest, TelegramError

from runtime.bot import render
from runtime.bot.commands import command
from runtime.bot.context import Relay, Reply, Req
from runtime.protocol import Api, ErrorKind, RelayError, new_id
from runtime.protocol.wire import FILE_CHUNK_BYTES, MAX_FILE_BYTES

# What codex takes as `localImage` input (it reads these formats itself); anything else is refused by name.
IMAGE_TYPES: Final = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp"}
DEFAULT_IMAGE_PROMPT: Final = "Look at this image."
HTTP_MARGIN: Final = 5.0  # the HTTP wait outlives the manager's own deadline


def _decode(answer: dict[str, Any]) -> bytes:
    try:
        return base64.b64decode(str(answer.get("data") or ""), validate=True)
    except (binascii.Error, ValueError):
        raise RelayError(ErrorKind.INTERNAL, "the manager sent a file that is not base64") from None


async def _call(relay: Relay, req: Req, path: Api, body: dict[str, Any]) -> dict[str, Any]:
    timeout = relay.config.appserver_timeout
    return await relay.manager.post(path, req.trace_id, {"chat_key": req.chat_key, "timeout": timeout, **body},
                                    timeout=timeout + HTTP_MARGIN)


@command("file")
async def file_(relay: Relay, req: Req, args: str) -> None:
    verb, _, path = args.partition(" ")
    if verb != "get" or not path.strip():
        raise Reply(render.USAGE["file"])
    await relay.selected_node(req)
    answer, data = await _get(relay, req, path.strip())
    if not data:  # Telegram refuses an empty document
        await relay.say(req, f"{answer['path']} is empty (0 bytes): there is nothing to send.")
        return
    await relay.delivery.document(req.chat_id, str(answer["name"]), data,
                                  f"{answer['path']} ({answer['size']} bytes)", trace_id=req.trace_id)


async def _get(relay: Relay, req: Req, path: str) -> tuple[dict[str, Any], bytes]:
    """The file in chunks of FILE_CHUNK_BYTES, in order; one that changes meanwhile (size or time) is refused."""
    limit = relay.config.file_max_bytes
    first = await _call(relay, req, Api.FILES_GET, {"path": path})
    if int(first["size"]) > limit:
        raise RelayError(ErrorKind.FILE_TOO_LARGE, f"{path} is {first['size']} bytes; the bot takes at most {limit} "
                                                   "bytes (file_max_bytes)")
    data = bytearray(_decode(first))
    for _ in range(limit // FILE_CHUNK_BYTES + 1):  # bounded by the size checked above
        if len(data) >= int(first["size"]):
            break
        more = await _call(relay, req, Api.FILES_GET, {"path": path, "offset": len(data)})
        chunk = _decode(more)
        if (more["size"], more["mtime_ns"]) != (first["size"], first["mtime_ns"]) or not chunk:
            raise RelayError(ErrorKind.CONFLICT, f"{path} changed while it was being sent: ask again once it is "
                                                 "finished")
        data += chunk
    return first, bytes(data[:int(first["size"])])


async def _put(relay: Relay, req: Req, name: str, data: bytes) -> dict[str, Any]:
    """The file to the node in chunks of FILE_CHUNK_BYTES, in order, the last one final: every frame and every
    control body stays within its 1 MiB limit whatever the file's size."""
    upload_id, answer = new_id("up"), {}
    for offset in range(0, max(len(data), 1), FILE_CHUNK_BYTES):
        chunk = data[offset:offset + FILE_CHUNK_BYTES]
        answer = await _call(relay, req, Api.FILES_PUT, {
            "name": name, "upload_id": upload_id, "offset": offset, "final": offset + len(chunk) >= len(data),
            "data": base64.b64encode(chunk).decode()})
    return answer


@command("diff")
async def diff(relay: Relay, req: Req, args: str) -> None:
    await relay.selected_node(req)
    answer = await _call(relay, req, Api.FILES_DIFF, {})
    if answer.get("empty"):
        await relay.say(req, f"No changes in {answer['path']}: git sees nothing to diff there.")
        return
    await relay.delivery.document(req.chat_id, str(answer["name"]), _decode(answer),
                                  f"git diff of {answer['path']} ({answer['size']} bytes)", trace_id=req.trace_id)


def _too_large(what: str, size: int, limit: int, which: str = "file_max_bytes") -> RelayError:
    return RelayError(ErrorKind.FILE_TOO_LARGE, f"{what} is {size} bytes; the bot takes at most {limit} bytes "
                                                f"({which})")


async def _download(bot: Bot, file_id: str) -> bytes:
    """The file's bytes from Telegram: getFile, then its file_path on Telegram's file server."""
    try:
        tg_file = await bot.get_file(file_id)
        return bytes(await tg_file.download_as_bytearray())
    except BadRequest as exc:
        if "too big" in exc.message.lower():
            raise RelayError(ErrorKind.FILE_TOO_LARGE, "Telegram lets bots download files of up to 20 MB only: "
                                                       "send a smaller file") from None
        raise RelayError(ErrorKind.INVALID_REQUEST, f"Telegram refused the file: {exc.message}") from None
    except TelegramError as exc:
        raise RelayError(ErrorKind.TIMEOUT, f"the file could not be fetched from Telegram ({exc}): send it "
                                            "again") from None


async def take_media(relay: Relay, req: Req, message: Message, bot: Bot) -> None:
    """A document or photo from the user: saved in the thread's uploads folder on the chat's node. A photo (or an
    image sent as a file) goes to codex as `localImage` input with the caption as the prompt; a document's caption
    goes to codex naming the saved file."""
    node_id, chat = await relay.selected_node(req)
    limit = relay.config.file_max_bytes
    caption = (message.caption or "").strip()
    if message.voice is not None:
        await _voice(relay, req, message, bot, node_id, chat)
        return
    if message.photo:
        photo = message.photo[-1]  # Telegram lists the sizes smallest first
        file_id, size, name, image = photo.file_id, photo.file_size, f"photo-{photo.file_unique_id}.jpg", True
    elif message.document is not None:
        doc = message.document
        mime = (doc.mime_type or "").lower()
        image = mime.startswith("image/")
        if image and mime not in IMAGE_TYPES:
            raise RelayError(ErrorKind.INVALID_REQUEST, f"{doc.file_name or 'this image'} is {mime}; Codex takes "
                                                        f"{', '.join(IMAGE_TYPES)} images: convert it, or send it "
                                                        "as a file of another type")
        file_id, size = doc.file_id, doc.file_size
        name = doc.file_name or (f"image.{IMAGE_TYPES[mime]}" if image else "file")
    else:
        raise Reply("I can take documents and photos; this message has neither.")
    what = "The photo" if message.photo else f"{name}"
    if size is not None and size > limit:  # Telegram says the size up front: refused before any download
        raise _too_large(what, size, limit)
    data = await _download(bot, file_id)
    if len(data) > limit:
        raise _too_large(what, len(data), limit)
    saved = await _put(relay, req, name, data)
    if image:
        await relay.turns.start(req, node_id, caption or DEFAULT_IMAGE_PROMPT, chat, images=[str(saved["path"])])
        return
    await relay.say(req, f"Saved {saved['name']} ({saved['size']} bytes) as {saved['path']} on {node_id}."
                    + ("" if caption else " Mention it in a message to have Codex use it."))
    if caption:
        await relay.turns.start(req, node_id, f"{caption}\n\n(I uploaded a file; it is saved at {saved['path']}.)",
                                chat)


async def _voice(relay: Relay, req: Req, message: Message, bot: Bot, node_id: str, chat: dict[str, Any]) -> None:
    """A voice note: transcribed on the chat's node (its model provider's speech to text), the transcript shown,
    then run as the prompt."""
    assert message.voice is not None
    voice, limit = message.voice, min(relay.config.file_max_bytes, MAX_FILE_BYTES)  # a voice note goes in one frame
    which = "file_max_bytes, and what one frame to the node carries: a few minutes of voice"
    if voice.file_size is not None and voice.file_size > limit:
        raise _too_large("The voice note", voice.file_size, limit, which)
    data = await _download(bot, voice.file_id)
    if len(data) > limit:
        raise _too_large("The voice note", len(data), limit, which)
    answer = await _call(relay, req, Api.FILES_TRANSCRIBE, {"name": f"voice-{voice.file_unique_id}.ogg",
                                                            "data": base64.b64encode(data).decode()})
    text = str(answer.get("text") or "").strip()
    if not text:
        raise Reply("I could not make out any words in that voice note. Try again, or type it.")
    await relay.say(req, f"🎙 {text}")
    await relay.turns.start(req, node_id, text, chat)
