"""PTB glue: every update is authorised, traced, logged, and answered even when something fails.

Commands and buttons share one guard, so "unauthorized", prompts and failures read the same everywhere.
"""
from __future__ import annotations

import logging
import time
from functools import partial
from collections.abc import Awaitable, Callable

from telegram import Update
from telegram.ext import Application, CallbackQueryHandler, CommandHandler, ContextTypes, MessageHandler, filters

from runtime.bot import files, models, permissions, render, threads, wizard
from runtime.bot.commands import BUTTONS, COMMANDS, Command
from runtime.bot.context import Relay, Reply, Req
from runtime.bot.flood import Refusal
from runtime.bot.permissions import Role, Rule
from runtime.logfmt import log
from runtime.protocol import RelayError

# The modules that register commands and buttons besides commands.py: imported here, so the bot has them all.
COMMAND_MODULES = (models, threads, files)
logger = logging.getLogger("codex_bot.handlers")

Work = Callable[[Req], Awaitable[str | None]]  # returns a toast text for buttons, None for messages


async def _guarded(relay: Relay, update: Update, op: str, rule: Rule, what: str, work: Work,
                   subject: str = "this bot") -> None:
    """Authorise by the permission matrix's rule, run, and turn every outcome into one answer: a message, or a
    callback answer. `subject` is what a refusal says is not for this user."""
    req = Req.of(update)
    if req is None:
        await _unaddressed(relay, update, what)
        return
    started = time.monotonic()
    fields = {"cmd": what, "chat_id": req.chat_id, "user_id": req.user_id, "trace_id": req.trace_id}
    if (refusal := relay.flood.admit(req.user_id)) is not None:  # before anything costs a manager call
        await _flooded(relay, req, refusal, fields)
        return
    toast: str | None = None
    alert = False
    try:
        role = await relay.access.role(req.user_id, req.trace_id)
        if role < rule.who:
            log(logger, logging.WARNING, "unauthorized", **fields, role=role.name.lower(), needs=rule.who.name.lower())
            toast, alert = render.unauthorized(req.user_id, subject, admin_only=rule.who == Role.ADMIN), True
        else:
            toast = await work(req)
            log(logger, logging.INFO, op, **fields, outcome="ok", ms=round((time.monotonic() - started) * 1000))
    except Reply as prompt:
        log(logger, logging.INFO, op, **fields, outcome="prompt", ms=round((time.monotonic() - started) * 1000))
        toast, alert = prompt.text, True
    except RelayError as err:
        log(logger, logging.WARNING, op, **fields, outcome="failed", error_kind=err.kind, error=err.error,
            ms=round((time.monotonic() - started) * 1000))
        toast, alert = render.failure(what, err.kind, err.error), True
    except Exception:  # a bug: logged with its traceback, while the user still gets an answer
        logger.exception("handler failed", extra={"kv": {"op": "handler_crashed", **fields}})
        toast, alert = render.failure(what, "internal", f"trace_id={req.trace_id}"), True
    # `alert`: a prompt or failure, shown as an alert on a button and as a reply to a message.
    if req.query_id is not None:
        await relay.delivery.answer(req.query_id, toast, alert, chat_id=req.chat_id, trace_id=req.trace_id)
    elif toast is not None and alert:
        await relay.say(req, toast)


async def _flooded(relay: Relay, req: Req, refusal: Refusal, fields: dict[str, object]) -> None:
    """Past the user's rate limit: told once, with the wait; the rest of the flood is skipped (a button's spinner
    still stops)."""
    log(logger, logging.WARNING if refusal.tell else logging.INFO, "rate_limited", **fields, wait_s=refusal.wait,
        told=refusal.tell)
    text = render.slow_down(refusal.wait, relay.config.user_rate_limit, relay.config.user_rate_window)
    if req.query_id is not None:
        await relay.delivery.answer(req.query_id, text if refusal.tell else None, refusal.tell,
                                    chat_id=req.chat_id, trace_id=req.trace_id)
    elif refusal.tell:
        await relay.say(req, text)


async def _unaddressed(relay: Relay, update: Update, what: str) -> None:
    """No sender to authorise, or no chat to act in: nothing runs. A button press is still answered, so the
    user's spinner stops; a message without a sender (a channel's, an anonymous one) is skipped quietly."""
    query = update.callback_query
    log(logger, logging.INFO, "update_ignored", cmd=what, update_id=update.update_id,
        reason="no chat" if update.effective_user else "no sender")
    if query is not None:
        await relay.delivery.answer(query.id, render.STALE_BUTTON, True)


def _command_handler(relay: Relay, cmd: Command) -> CommandHandler[ContextTypes.DEFAULT_TYPE, None]:
    async def handle(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        text = update.effective_message.text if update.effective_message else ""
        parts = (text or "").split(maxsplit=1)
        args = parts[1].strip() if len(parts) > 1 else ""  # the raw rest keeps JSON and notes intact

        async def work(req: Req) -> None:
            await cmd.fn(relay, req, args)
        await _guarded(relay, update, "command", cmd.rule, f"/{cmd.name}", work, subject=f"/{cmd.name}")
    return CommandHandler(cmd.name, handle)


async def _button(relay: Relay, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    data = update.callback_query.data if update.callback_query else None
    prefix, _, arg = (data or "").partition(":")
    known = BUTTONS.get(prefix)

    async def work(req: Req) -> str:
        if known is None or not arg:
            raise Reply(render.STALE_BUTTON)
        return await known.fn(relay, req, arg)
    await _guarded(relay, update, "button", known.rule if known else permissions.OTHER, f"button {prefix or '?'}", work,
                   subject="this button")


async def _text(relay: Relay, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    text = update.effective_message.text if update.effective_message else None

    async def work(req: Req) -> None:
        if await wizard.take_text(relay, req, text or ""):  # the path a /thread wizard asked for
            return
        # While codex waits on a question in this chat that takes a typed answer, the message is that answer.
        if (open_question := relay.approvals.typed_answer_for(req.chat_id)) is not None:
            await relay.say(req, await relay.approvals.answer(req, *open_question, text or ""))
            return
        node_id, chat = await relay.selected_node(req)
        await relay.turns.start(req, node_id, text or "", chat)
    await _guarded(relay, update, "text", permissions.TEXT, "Sending to Codex", work)


async def _media(relay: Relay, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message

    async def work(req: Req) -> None:
        if message is not None:
            await files.take_media(relay, req, message, context.bot)
    await _guarded(relay, update, "media", permissions.MEDIA, "Uploading to the node", work)


async def _unknown(relay: Relay, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message  # filters.COMMAND: its first entity is the command
    command = message.parse_entity(message.entities[0]) if message and message.entities else ""
    _, at, addressee = command.partition("@")
    if at and addressee.lower() != (context.bot.username or "").lower():
        return  # `/cmd@otherbot` in a group is another bot's business

    async def work(req: Req) -> None:
        if await wizard.take_text(relay, req, message.text or "" if message else ""):  # "/srv/app" reads as a command
            return
        raise Reply("Unknown command. /help lists what I can do.")
    await _guarded(relay, update, "command", permissions.OTHER, "unknown command", work)


async def _on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    # Reached only by bugs: _guarded answers every expected failure itself.
    exc = context.error
    log(logger, logging.ERROR, "handler_crashed", error=f"{type(exc).__name__}: {exc}",
        update_id=update.update_id if isinstance(update, Update) else None)


def install(app: Application, relay: Relay) -> None:  # type: ignore[type-arg]
    for cmd in COMMANDS.values():
        app.add_handler(_command_handler(relay, cmd))
    app.add_handler(CallbackQueryHandler(partial(_button, relay)))
    app.add_handler(MessageHandler(filters.COMMAND, partial(_unknown, relay)))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, partial(_text, relay)))
    app.add_handler(MessageHandler(filters.PHOTO | filters.Document.ALL | filters.VOICE, partial(_media, relay)))
    app.add_error_handler(_on_error)
