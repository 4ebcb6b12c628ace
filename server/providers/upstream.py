"""One pooled aiohttp session per provider, and the failure classification all HTTP providers share.

aiohttp, not httpx, on the hot path: measured on this machine kind, a
one-core proxy on httpx tops out under 1,000 requests/s while aiohttp's
pooled session reaches ~5,800 (encode/httpx#3215).

Timeouts: a non-streaming call gets `timeout_s` for the whole answer; a
stream gets `timeout_s` until the first byte and between reads. Both are
capped by the call's deadline. A timeout says whether the request had been
sent (it had a connection: `providers/sending.py`), since the upstream may
have read a prompt it was sent. Nothing in an error says which host or key
was used.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import orjson

from server.chunks import Item
from server.config import ProviderConfig
from server.context import CallContext
from server.errors import (
    GatewayError,
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
)
from server.providers.sending import MarkingConnector, Sending

__all__ = [
    "HttpProvider",
    "UpstreamClient",
    "bearer",
    "decode",
    "decoded",
    "line_batches",
    "sse_batches",
]

T = TypeVar("T")

MAX_ERROR_BODY = 64 * 1024
MAX_LINE_BYTES = 8 * 1024 * 1024  # one event or NDJSON line of a stream
MAX_READ_BYTES = 64 * 1024  # what one batch of a stream is made from, at most


def _retry_after(headers: Mapping[str, str]) -> float | None:
    if (ms := headers.get("retry-after-ms")) is not None:
        with contextlib.suppress(ValueError):
            return max(float(ms) / 1000, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    with contextlib.suppress(ValueError):
        return max(float(value), 0.0)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value).timestamp()
        return max(when - time.time(), 0.0)
    return None


_FIELD = re.compile(r"[A-Za-z0-9_.\[\]]{1,100}")


def _upstream_param(body: bytes) -> str | None:
    """The field an OpenAI- or Anthropic-shaped error body names, if it looks like one."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    param = error.get("param") if isinstance(error, dict) else None
    return param if isinstance(param, str) and _FIELD.fullmatch(param) else None


_INVALID = (orjson.JSONDecodeError, TypeError, ValueError, AttributeError, KeyError)


def decode(raw: bytes, convert: Callable[[Any], T]) -> T:
    """`convert(JSON)` of an upstream answer; anything malformed is an upstream error,
    never the caller's (the strict parser's InvalidRequestError included)."""
    try:
        return convert(orjson.loads(raw))
    except (*_INVALID, InvalidRequestError):
        raise UpstreamError("upstream provider sent an invalid response") from None


def status_error(status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
    """What a non-2xx upstream answer means for the caller."""
    if status in (408, 429) or status >= 500:
        return UpstreamError(
            f"upstream provider answered HTTP {status}",
            retryable=True,
            retry_after_s=_retry_after(headers),
        )
    if status in (400, 413, 422):
        # the upstream's own words may name hosts, keys or internals: only its `param` passes
        param = _upstream_param(body)
        where = f" (field {param})" if param else ""
        return InvalidRequestError(f"upstream provider rejected the request{where}", param=param)
    if status in (401, 403):
        return UpstreamError("upstream provider refused the gateway's credentials")
    return UpstreamError(f"upstream provider answered HTTP {status}")


class UpstreamClient:
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
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST JSON and yield the 2xx response; every failure is a classified
        `GatewayError`. Leaving the block early (cancellation) closes the request."""
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
                    raise status_error(response.status, response.headers, raw)
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


async def line_batches(response: aiohttp.ClientResponse) -> AsyncGenerator[list[bytes], None]:
    """The body's lines, one list for what each read brought, so that the events of
    one read leave the gateway in one write. A read takes at most `MAX_READ_BYTES`
    (aiohttp's `readany` hands over all it buffered, ~500 KB seen), so a stream
    stuck on a reader that does not read holds a bounded batch in each of its
    forms. A last line without a newline counts; a line longer than
    `MAX_LINE_BYTES` is an upstream error."""
    content = response.content
    pending: list[bytes] = []  # the start of a line not yet ended
    pending_bytes = 0
    while data := await content.read(MAX_READ_BYTES):
        if b"\n" not in data:
            pending.append(data)
            pending_bytes += len(data)
            if pending_bytes > MAX_LINE_BYTES:
                raise _too_long()
            continue
        if pending:
            data = b"".join(pending) + data
            pending.clear()
        lines = data.split(b"\n")
        rest = lines.pop()
        pending_bytes = len(rest)
        # only what is longer than the bound can hold a line longer than it
        if len(data) > MAX_LINE_BYTES and max(pending_bytes, *map(len, lines)) > MAX_LINE_BYTES:
            raise _too_long()
        if rest:
            pending.append(rest)
        yield lines
    if pending:
        yield [b"".join(pending)]


def _too_long() -> UpstreamError:
    return UpstreamError("upstream provider sent a line that is too long")


async def sse_batches(response: aiohttp.ClientResponse) -> AsyncGenerator[list[bytes], None]:
    """The `data:` payloads of an SSE body, one list for each read, up to `[DONE]`."""
    async with contextlib.aclosing(line_batches(response)) as reads:
        async for lines in reads:
            payloads: list[bytes] = []
            for line in lines:
                if line.startswith(b"data:"):
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        if payloads:
                            yield payloads
                        return
                    if data:
                        payloads.append(data)
            if payloads:
                yield payloads


async def decoded(
    batches: AsyncGenerator[list[bytes], None], convert: Callable[[Any], Item | None]
) -> AsyncGenerator[list[Item], None]:
    """Each batch's items decoded and converted (blank lines, and items that convert
    to None, dropped). The items before one that fails still go out, in a batch
    of their own, before the failure: what reached the gateway reaches the caller."""
    async with contextlib.aclosing(batches):
        async for batch in batches:
            out: list[Item] = []
            try:
                for raw in batch:
                    if raw and not raw.isspace() and (item := decode(raw, convert)) is not None:
                        out.append(item)
            except Exception:
                if out:
                    yield out
                raise
            if out:
                yield out


def bearer(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class HttpProvider:
    """What the HTTP kinds share: a name, a retry budget and one pooled client."""

    def __init__(self, config: ProviderConfig, *, headers: Mapping[str, str]) -> None:
        self.name = config.name
        self.kind: str = config.kind
        self.max_retries = config.max_retries
        self.client = UpstreamClient(config, headers=headers)

    async def aclose(self) -> None:
        await self.client.aclose()
