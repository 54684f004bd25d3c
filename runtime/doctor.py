"""`codex-relay-<service> doctor`: one line per check of a machine's setup, each failure with its fix.

A service's doctor yields its checks in order; one that cannot run because an earlier one failed is a `skip`
that says which. The exit code is 0 only when every check passed.
"""
from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

import aiohttp

from runtime import eventloop, logfmt, tls
from runtime.protocol import Api

EXIT_FAILED = 1  # any check failed or could not run


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "FAIL" or "skip"
    detail: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.status:<4}  {self.name}: {self.detail}" + (f" | fix: {self.fix}" if self.fix else "")


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "FAIL", detail, fix)


def skip(name: str, why: str) -> Check:
    return Check(name, "skip", why)


async def reach_manager(http: aiohttp.ClientSession, base: str, trust: str, fix_url: str,
                        fix_tls: str) -> tuple[list[Check], bool]:
    """The manager's /healthz through `http` (which carries the client's TLS settings): a `manager` line, and a
    `tls` line for an https:// base; True when it answered."""
    secure = base.startswith("https://")
    try:
        async with http.get(base + Api.HEALTHZ.value) as resp:
            status = resp.status
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if (problem := tls.failure(exc)) is not None:
            return [fail("manager", f"{base} was reached, but not over trusted TLS", "see the tls line"),
                    fail("tls", problem, fix_tls)], False
        lines = [fail("manager", f"cannot reach {base}: {exc or type(exc).__name__}", fix_url)]
        return lines + ([skip("tls", "needs the manager reachable")] if secure else []), False
    if status != 200:
        return [fail("manager", f"{base}{Api.HEALTHZ.value} answered HTTP {status}",
                     f"check that {base} is a Codex Relay manager, and its log")], False
    return [ok("manager", f"{base} answers")] + ([ok("tls", f"the manager's certificate is trusted ({trust})")]
                                                 if secure else []), True


async def report(checks: AsyncIterator[Check], out: TextIO) -> int:
    """Print each check as it finishes, then a summary; the exit code."""
    counts = {"ok": 0, "FAIL": 0, "skip": 0}
    async for check in checks:
        print(check.line(), file=out, flush=True)
        counts[check.status] += 1
    print(f"doctor: {counts['ok']} ok, {counts['FAIL']} failed, {counts['skip']} skipped", file=out, flush=True)
    return 0 if counts["FAIL"] == counts["skip"] == 0 else EXIT_FAILED


def main(checks: Callable[[Sequence[str]], AsyncIterator[Check]], argv: Sequence[str]) -> None:
    """Run a doctor: the checklist on stdout; the service's own log lines (warnings only) stay on stderr."""
    logfmt.setup("warning")
    sys.exit(eventloop.run(report(checks(argv), sys.stdout), "asyncio"))
