"""The chat's own settings for its turns, and what its node's login may still spend: /verbose, /result, /usage
(registered in commands.py). The settings are the manager's, per chat, surviving restarts; a turn reads them as
it starts."""
from __future__ import annotations

from runtime.bot import render
from runtime.bot.context import Relay, Reply, Req
from runtime.protocol import Api, ErrorKind, RelayError

NO_LIMITS = "authentication required"  # codex's refusal of account/rateLimits/read without a ChatGPT login


async def verbose(relay: Relay, req: Req, args: str) -> None:
    if not args:
        await relay.say(req, render.verbose_now(int((await relay.chat(req))["verbose"])))
    elif args in ("0", "1", "2"):
        await relay.manager.post(Api.CHAT_SELECT, req.trace_id, {"chat_key": req.chat_key, "verbose": int(args)})
        await relay.say(req, render.verbose_now(int(args), changed=True))
    else:
        raise Reply(render.USAGE["verbose"])


async def result(relay: Relay, req: Req, args: str) -> None:
    if not args:
        await relay.say(req, render.result_now(str((await relay.chat(req))["result_mode"])))
    elif args in render.RESULT_MODES:
        await relay.manager.post(Api.CHAT_SELECT, req.trace_id, {"chat_key": req.chat_key, "result_mode": args})
        await relay.say(req, render.result_now(args, changed=True))
    else:
        raise Reply(render.USAGE["result"])


async def usage(relay: Relay, req: Req, args: str) -> None:
    node_id, _ = await relay.selected_node(req)
    try:
        limits = await relay.appserver(req, node_id, "account/rateLimits/read", {}) or {}
    except RelayError as err:
        if err.kind == ErrorKind.APPSERVER_ERROR and NO_LIMITS in (err.error or ""):
            raise Reply(render.no_limits(node_id, err.error)) from None
        raise
    await relay.say(req, render.rate_limits(node_id, limits))
