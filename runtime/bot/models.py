"""/model [name] [effort]: the chat's model and reasoning effort, among those `model/list` reports on its node.

The manager keeps both per chat; each turn passes them to codex (`turn/start`'s `model` and `effort`). Codex takes
any name and any effort without a word, so the bot offers and accepts only what the node's model/list lists. Codex
keeps a turn's model and effort for the thread's later turns, so the bot always stores both explicitly: a model
picked alone gets its default effort, and `/model default` stores what the node's codex config names.
"""
from __future__ import annotations

from typing import Any

from telegram import InlineKeyboardMarkup

from runtime.bot import render_threads as rt
from runtime.bot.commands import button, command
from runtime.bot.context import Relay, Reply, Req
from runtime.bot.render import Cb
from runtime.protocol import Api

DEFAULT = "default"


async def _models(relay: Relay, req: Req) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    node_id, chat = await relay.selected_node(req)
    listed = await relay.appserver(req, node_id, "model/list", {}) or {}
    return node_id, chat, [m for m in listed.get("data") or [] if isinstance(m, dict)]


def _efforts(model: dict[str, Any]) -> list[str]:
    return [str(e.get("reasoningEffort")) for e in model.get("supportedReasoningEfforts") or [] if isinstance(e, dict)]


async def _select(relay: Relay, req: Req, name: str, effort: str | None) -> tuple[str, InlineKeyboardMarkup | None]:
    """Pick a model (and an effort) after checking both against the node's model/list. Without an effort, the
    chat's current one is kept if the new model offers it, else the model's default applies."""
    node_id, chat, models = await _models(relay, req)
    found = next((m for m in models if name in (m.get("id"), m.get("model"))), None)
    if found is None:
        raise Reply(rt.unknown_model(name, node_id, [str(m.get("id")) for m in models]))
    model, efforts = str(found.get("id")), _efforts(found)
    if effort is not None and effort not in efforts:
        raise Reply(rt.unknown_effort(effort, model, efforts))
    kept = effort or (chat.get("effort") if chat.get("effort") in efforts else found.get("defaultReasoningEffort"))
    await relay.manager.post(Api.CHAT_SELECT, req.trace_id, {"chat_key": req.chat_key, "model": model,
                                                             "effort": kept})
    return rt.model_selected(model, kept, efforts)


async def _reset(relay: Relay, req: Req) -> str:
    """The node's defaults, as its codex config names them (else model/list's default model), stored explicitly."""
    node_id, _, models = await _models(relay, req)
    config = (await relay.appserver(req, node_id, "config/read", {}) or {}).get("config") or {}
    name = config.get("model") or next((m.get("id") for m in models if m.get("isDefault")), None)
    found = next((m for m in models if name in (m.get("id"), m.get("model"))), {})
    effort = config.get("model_reasoning_effort") or found.get("defaultReasoningEffort")
    await relay.manager.post(Api.CHAT_SELECT, req.trace_id, {"chat_key": req.chat_key, "model": name,
                                                             "effort": effort})
    return rt.model_reset(name, effort)


@command("model")
async def model(relay: Relay, req: Req, args: str) -> None:
    parts = args.split()
    if len(parts) > 2:
        raise Reply(rt.MODEL_USAGE)
    if parts == [DEFAULT]:
        await relay.say(req, await _reset(relay, req))
    elif parts:
        await relay.say(req, *await _select(relay, req, parts[0], parts[1] if len(parts) > 1 else None))
    else:
        _, chat, models = await _models(relay, req)
        await relay.say(req, *rt.models(models, chat))


async def _button(relay: Relay, req: Req, name: str, effort: str | None) -> str:
    """The listing becomes the outcome, with the model's efforts as its buttons."""
    text, markup = await _select(relay, req, name, effort)
    if req.message_id is not None:
        await relay.delivery.edit(req.chat_id, req.message_id, text, markup, trace_id=req.trace_id)
    return text


@button(Cb.MODEL)
async def model_button(relay: Relay, req: Req, name: str) -> str:
    return await _button(relay, req, name, None)


@button(Cb.EFFORT)
async def effort_button(relay: Relay, req: Req, arg: str) -> str:
    name, _, effort = arg.rpartition(":")
    if not name or not effort:
        raise Reply(rt.MODEL_USAGE)
    return await _button(relay, req, name, effort)
