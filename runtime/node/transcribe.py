"""A voice note as text: OpenAI's speech-to-text API (`POST <base_url>/audio/transcriptions`, multipart `file` and
`model`) at the node's model provider, or at `transcribe_url`. The node, not the bot, calls it: the node is where
the provider's address, proxy and credentials live, and the audio is the user's, so it goes only where the
node's turns already go."""
from __future__ import annotations

import base64
import binascii

import aiohttp

from runtime.node.config import SETTINGS, NodeConfig
from runtime.protocol import ErrorKind, RelayError
from runtime.protocol import wire
from runtime.protocol.wire import MAX_FILE_BYTES

PATH = "/audio/transcriptions"
ERROR_TEXT_MAX = 300  # characters of the provider's error shown to the user


def endpoint(config: NodeConfig, provider_url: str) -> str:
    if config.transcribe_url:
        return config.transcribe_url
    if not provider_url:
        raise RelayError(ErrorKind.NOT_CONFIGURED, "the node does not know its model provider's address yet: set "
                                                   f"{SETTINGS.where('transcribe_url')}")
    return provider_url.rstrip("/") + PATH


async def transcribe(config: NodeConfig, provider_url: str, msg: wire.FileRequest) -> wire.FileOutcome:
    if not config.transcribe_model:
        raise RelayError(ErrorKind.NOT_CONFIGURED, f"voice notes are off on node {config.node_id}: set "
                                                   f"{SETTINGS.where('transcribe_model')} (e.g. gpt-4o-mini-"
                                                   "transcribe) to transcribe them at the model provider")
    try:
        audio = base64.b64decode(msg.data, validate=True)
    except (binascii.Error, ValueError):
        raise RelayError(ErrorKind.INVALID_REQUEST, "field `data`: not base64") from None
    limit = min(config.file_max_bytes, MAX_FILE_BYTES)  # a voice note goes in one frame
    if len(audio) > limit:
        raise RelayError(ErrorKind.FILE_TOO_LARGE, f"the voice note is {len(audio)} bytes, over the node's limit of "
                                                   f"{limit} bytes (file_max_bytes, and what one frame carries)")
    url = endpoint(config, provider_url)
    form = aiohttp.FormData()
    form.add_field("model", config.transcribe_model)
    form.add_field("response_format", "json")
    form.add_field("file", audio, filename=msg.name or "voice.ogg", content_type="application/octet-stream")
    headers = {"Authorization": f"Bearer {config.transcribe_api_key}"} if config.transcribe_api_key else {}
    try:
        # trust_env: the proxy variables codex itself honours apply here too.
        async with aiohttp.ClientSession(trust_env=True, timeout=aiohttp.ClientTimeout(total=msg.timeout)) as http:
            async with http.post(url, data=form, headers=headers) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise RelayError(ErrorKind.PROVIDER_UNREACHABLE, f"speech to text at {url} failed: "
                                                         f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_MAX]) from None
    if status >= 400 or not isinstance(body, dict) or not isinstance(body.get("text"), str):
        error = body.get("error") if isinstance(body, dict) else None
        said = str(error.get("message") if isinstance(error, dict) else error or body)[:ERROR_TEXT_MAX]
        kind = ErrorKind.UPSTREAM_UNAUTHORIZED if status in (401, 403) else ErrorKind.UPSTREAM_ERROR
        raise RelayError(kind, f"speech to text at {url} answered HTTP {status}: {said}")
    return wire.FileOutcome(ok=True, name=msg.name, size=len(audio), text=body["text"].strip())
