"""Who may use the bot: the configured allowlist and admins, plus the users the manager keeps (cached briefly).

A stale copy of the manager's list is better than refusing known users while the manager restarts.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time

from runtime.bot.config import BotConfig
from runtime.bot.manager_client import ManagerClient
from runtime.bot.permissions import Role
from runtime.logfmt import log
from runtime.protocol import Api, ErrorKind, RelayError

logger = logging.getLogger("codex_bot.access")

ROLES = {"admin": Role.ADMIN, "user": Role.USER}  # the manager's role names
REFRESH_TIMEOUT = 5.0
FAILED_PAUSE = 5.0
NEGATIVE_REFRESH = 0.2  # an unknown user triggers a refetch at most this often, so a just-added user is seen at once


class Access:
    def __init__(self, config: BotConfig, manager: ManagerClient) -> None:
        self.config = config
        self.manager = manager
        self._roles: dict[int, Role] | None = None
        self._fetched_at, self._next_try = -math.inf, 0.0
        self._error: RelayError | None = None
        self._lock = asyncio.Lock()

    async def role(self, user_id: int, trace_id: str) -> Role:
        """The user's role; manager_unavailable only when the answer is truly unknown."""
        if user_id in self.config.admin_users:
            return Role.ADMIN
        now = time.monotonic()
        due = self._roles is None or now - self._fetched_at > self.config.users_ttl or user_id not in self._roles
        if due and (now >= self._next_try or self._lock.locked()):
            async with self._lock:  # concurrent updates share one fetch instead of judging from nothing
                if time.monotonic() >= self._next_try:
                    await self._refresh(trace_id)
        role = (self._roles or {}).get(user_id)
        if role is not None:
            return role
        if user_id in self.config.allowed_users:
            return Role.USER
        if self._roles is None:
            # Never fetched: a stranger cannot be told apart from a user the manager allows.
            err = self._error or RelayError(ErrorKind.MANAGER_UNAVAILABLE)
            raise RelayError(err.kind, err.error)
        return Role.STRANGER

    async def admin_ids(self, trace_id: str) -> set[int]:
        """Where approvals go when no chat asked for them: configured admins and the manager's admins."""
        if time.monotonic() - self._fetched_at > self.config.users_ttl:
            await self._refresh(trace_id)
        return set(self.config.admin_users) | {u for u, r in (self._roles or {}).items() if r == Role.ADMIN}

    async def _refresh(self, trace_id: str) -> None:
        self._next_try = time.monotonic() + NEGATIVE_REFRESH
        try:
            # A short limit: a slow manager must not hold every command for a whole request timeout first.
            answer = await self.manager.get(Api.USERS, trace_id, timeout=min(self.config.request_timeout, REFRESH_TIMEOUT))
        except RelayError as err:
            log(logger, logging.WARNING, "users_refresh_failed", trace_id=trace_id, error_kind=err.kind,
                stale=self._roles is not None)
            self._error = err
            # Judge from the stale list for a while, so a slow manager does not delay every command twice.
            self._next_try = time.monotonic() + FAILED_PAUSE
            return
        self._roles = {int(u["user_id"]): ROLES[u["role"]] for u in answer.get("users") or [] if u.get("role") in ROLES}
        self._fetched_at = time.monotonic()

    def forget(self) -> None:
        """After /user changed the manager's list: the next check fetches it, so a removed user is refused at once."""
        self._fetched_at, self._next_try = -math.inf, 0.0
