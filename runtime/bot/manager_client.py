"""The bot's only door to the manager: control calls over HTTP, each answered as a result or a RelayError.

Transport failures become classified errors (manager_unavailable, timeout, unauthorized) so no
caller ever shows a traceback to a user, and every call carries and logs its X-Trace-Id.
"""
from __future__ import annotations

import logging
import ssl
import time
from typing import Any

import aiohttp

from runtime import tls
from runtime.logfmt import log
from runtime.protocol import Api, ErrorKind, RelayError, parse_kind

logger = logging.getLogger("codex_bot.manager")


class MaybeDelivered(RelayError):
    """The call left the bot but its answer was lost, so the manager may have acted on it.

    Only calls that are safe to repeat (a dispatch with the same task_id) may be retried after this.
    """


class ManagerClient:
    def __init__(self, base_url: str, control_token: str, timeout: float,
                 secure: ssl.SSLContext | aiohttp.Fingerprint | bool = True) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.secure = secure  # runtime/tls.py: how the manager's certificate is checked on an https:// URL
        self._headers = {"Authorization": f"Bearer {control_token}"}
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers,
                                                  connector=aiohttp.TCPConnector(ssl=self.secure))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, path: Api) -> str:
        return self.base_url + path.value

    def auth_headers(self) -> dict[str, str]:
        return dict(self._headers)

    async def get(self, path: Api, trace_id: str, timeout: float | None = None, **query: str) -> dict[str, Any]:
        return await self._call("GET", path, trace_id, query=query, timeout=timeout)

    async def post(self, path: Api, trace_id: str, body: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        return await self._call("POST", path, trace_id, body=body, timeout=timeout)

    async def appserver(self, node_id: str, method: str, params: dict[str, Any], trace_id: str,
                        timeout: float) -> Any:
        """One app-server JSON-RPC call on a node; returns the JSON-RPC `result`."""
        # The HTTP wait outlives the manager's own deadline, so a slow node is reported by the manager as a timeout.
        answer = await self.post(Api.APPSERVER, trace_id, {"node_id": node_id, "method": method, "params": params,
                                                           "timeout": timeout}, timeout=timeout + 5)
        return answer.get("result")

    async def _call(self, method: str, path: Api, trace_id: str, body: dict[str, Any] | None = None,
                    query: dict[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
        """The inner `result` when both planes say ok; otherwise a RelayError carrying the manager's kind."""
        limit = timeout or self.timeout
        started = time.monotonic()
        status: int | None = None
        try:
            try:
                async with self.session.request(method, self.url(path), json=body, params=query,
                                                headers={"X-Trace-Id": trace_id},
                                                timeout=aiohttp.ClientTimeout(total=limit)) as resp:
                    status = resp.status
                    payload = await resp.json(content_type=None)
            except aiohttp.ClientConnectorError as exc:
                if (problem := tls.failure(exc)) is not None:
                    raise RelayError(ErrorKind.MANAGER_UNAVAILABLE, problem) from None
                # Nothing reached the manager: it is down or unreachable.
                raise RelayError(ErrorKind.MANAGER_UNAVAILABLE,
                                 f"cannot connect: {exc.strerror or type(exc).__name__}") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError) as exc:
                raise MaybeDelivered(ErrorKind.MANAGER_UNAVAILABLE, f"the manager dropped the connection during "
                                                            f"{path.value}: {type(exc).__name__}") from None
            except TimeoutError:
                raise MaybeDelivered(ErrorKind.TIMEOUT, f"the manager did not answer {path.value} within {limit:g}s "
                                                "(timed out)") from None
            except ValueError:
                raise RelayError(ErrorKind.INTERNAL,
                                 f"the manager answered {path.value} with non-JSON (HTTP {status})") from None
            result = _unwrap(status, payload, path)
        except RelayError as err:
            # Transport and credential failures are the operator's concern; a business refusal is routine.
            level = logging.INFO if status == 200 else logging.ERROR if status == 401 else logging.WARNING
            log(logger, level, "manager_call", method=method, path=path.value, status=status, trace_id=trace_id,
                ms=round((time.monotonic() - started) * 1000), error_kind=err.kind, error=err.error)
            raise
        log(logger, logging.INFO, "manager_call", method=method, path=path.value, status=status, trace_id=trace_id,
            ms=round((time.monotonic() - started) * 1000))
        return result


def _unwrap(status: int | None, payload: Any, path: Api) -> dict[str, Any]:
    if status == 401:
        raise RelayError(ErrorKind.UNAUTHORIZED, "the manager refused the bot's control token: set --control-token "
                                         "(CODEX_RELAY_BOT_CONTROL_TOKEN) to the manager's control token")
    if not isinstance(payload, dict):
        raise RelayError(ErrorKind.INTERNAL, f"the manager answered {path.value} with an unexpected body (HTTP {status})")
    if not payload.get("ok"):
        raise RelayError(parse_kind(payload.get("error_kind")), payload.get("error"))
    result = payload.get("result")
    if not isinstance(result, dict):
        raise RelayError(ErrorKind.INTERNAL, f"the manager answered {path.value} without a result")
    if not result.get("ok"):
        raise RelayError(parse_kind(result.get("error_kind")), result.get("error"))
    return result
