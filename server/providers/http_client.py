"""One pooled aiohttp session per provider, and the POST every HTTP provider makes.

aiohttp, not httpx, on the hot path: measured on this machine kind, a
one-core proxy on httpx tops out under 1,000 requests/s while aiohttp's
pooled session reaches ~5,800 (encode/httpx#3215).

Timeouts: a non-streaming call gets `timeout_s` for the whole answer; a
stream gets `timeout_s` until the first byte and between reads. Both are
capped by the call's deadline. A timeout says whether the request had been
sent (it had a connection: `providers/sending.py`), since the upstream may
have read a prompt it was sent. Nothing in an error says which host or key
was used (`providers/failures.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import orjson

from server.config import ProviderConfig
from server.context import CallContext
from server.errors import GatewayError, UpstreamError, UpstreamTimeoutError
from server.providers.failures import status_error
from server.providers.sending import MarkingConnector, Sending

__all__ = ["HttpClient", "StatusError"]

# what a non-2xx answer means: (status, headers, body up to MAX_ERROR_BODY) -> the error
StatusError = Callable[[int, Mapping[str, str], bytes], GatewayError]

MAX_ERROR_BODY = 64 * 1024


class HttpClient:
    def __init__(self, config: ProviderConfig, *, headers: Mapping[str, str]) -> None:
        self._base = config.url.rstrip("/")
        self._headers = {"content-type": "application/json", **headers}
        self._timeout_s = config.timeout_s
        self._connect_timeout_s = config.connect_timeout_s
        self._max_connections = config.max_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, inside the running loop
            connector = MarkingConnector(limit=self._max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, raise_for_status=False
            )
        return self._session

    def _timeout(self, ctx: CallContext, *, streaming: bool) -> aiohttp.ClientTimeout:
        remaining = ctx.time_remaining()
        if remaining is not None and remaining <= 0:
            raise UpstreamTimeoutError("the call's deadline passed before the upstream answered")
        # `connect` bounds the wait for a pooled connection as well as the connect itself
        connect = self._connect_timeout_s
        if streaming:
            return aiohttp.ClientTimeout(
                total=remaining, connect=connect, sock_connect=connect, sock_read=self._timeout_s
            )
        total = self._timeout_s if remaining is None else min(self._timeout_s, remaining)
        return aiohttp.ClientTimeout(total=total, connect=connect, sock_connect=connect)

    @contextlib.asynccontextmanager
    async def post(
        self,
        path: str,
        body: Any,
        ctx: CallContext,
        *,
        streaming: bool,
        extra_headers: Mapping[str, str] | None = None,
        classify: StatusError = status_error,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST JSON and yield the 2xx response; every failure is a classified
        `GatewayError` (a non-2xx answer by `classify`). Leaving the block early
        (cancellation) closes the request."""
        headers = {"x-request-id": ctx.request_id}  # the same id in the upstream's logs
        if extra_headers:
            headers.update(extra_headers)
        if ctx.trace.traceparent is not None:
            headers["traceparent"] = ctx.trace.traceparent
            if ctx.trace.tracestate is not None:
                headers["tracestate"] = ctx.trace.tracestate
        sending = Sending.begin()
        try:
            async with self._get_session().post(
                self._base + path,
                data=orjson.dumps(body),
                headers=headers,
                timeout=self._timeout(ctx, streaming=streaming),
            ) as response:
                if response.status >= 300:
                    raw = await response.content.read(MAX_ERROR_BODY)
                    raise classify(response.status, response.headers, raw)
                yield response
        except TimeoutError:
            raise UpstreamTimeoutError(
                "upstream provider timed out", retryable=True, sent=sending.connected
            ) from None
        except aiohttp.ClientConnectorError:
            raise UpstreamError("cannot connect to the upstream provider", retryable=True) from None
        except (aiohttp.ClientError, OSError):
            raise UpstreamError("the upstream connection failed", retryable=True) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
