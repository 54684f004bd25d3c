"""Webhook mode on aiohttp (no tornado extra): each update Telegram POSTs is screened like a polled one, then
queued for PTB. A bad update is answered 200 and skipped: an error answer would make Telegram send it again."""
from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web
from telegram import Update
from telegram.ext import Application

from runtime.bot.updates import SUBSCRIBED, Screen

PATH = "/telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


class Webhook:
    def __init__(self, app: Application[Any, Any, Any, Any, Any, Any], screen: Screen, secret: str) -> None:
        self.app, self.screen, self.secret = app, screen, secret
        server = web.Application(client_max_size=1 << 20)
        server.router.add_post(PATH, self.receive)
        self.runner = web.AppRunner(server, access_log=None)

    async def start(self, listen: str, port: int, url: str) -> int:
        """Listen (port 0 takes a free one) and tell Telegram the URL; returns the port listened on."""
        await self.runner.setup()
        await web.TCPSite(self.runner, listen, port).start()
        await self.app.bot.set_webhook(url, allowed_updates=list(SUBSCRIBED), secret_token=self.secret or None)
        return int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def receive(self, request: web.Request) -> web.Response:
        if self.secret and not hmac.compare_digest(request.headers.get(SECRET_HEADER, ""), self.secret):
            return web.Response(status=403)
        try:
            raw = json.loads(await request.read())
            reason = self.screen.problem(raw)
        except ValueError:
            raw, reason = None, "body is not JSON"
        if reason is not None:
            self.screen.skip(raw, reason)
        else:
            await self.app.update_queue.put(Update.de_json(raw, self.app.bot))
        return web.Response()
