"""Typed keys for what the manager's aiohttp app holds."""
from __future__ import annotations

from aiohttp import web

from runtime.manager.collector import Collector
from runtime.manager.service import Manager

MANAGER = web.AppKey("manager", Manager)
COLLECTOR = web.AppKey("collector", Collector)
