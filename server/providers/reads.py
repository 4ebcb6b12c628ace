"""Reading an upstream's answer: its lines, its SSE events, and the JSON in them.

A stream travels in batches: each helper keeps, per upstream read, the list
of what that read brought. Anything malformed is an upstream error.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

import aiohttp
import orjson

from server.chunks import Item
from server.errors import InvalidRequestError, UpstreamError

__all__ = ["decode", "decoded", "line_batches", "read_at_most", "sse_batches"]

T = TypeVar("T")

MAX_LINE_BYTES = 8 * 1024 * 1024  # one event or NDJSON line of a stream
MAX_READ_BYTES = 64 * 1024  # what one batch of a stream is made from, at most

_INVALID = (orjson.JSONDecodeError, TypeError, ValueError, AttributeError, KeyError)


def decode(raw: bytes, convert: Callable[[Any], T]) -> T:
    """`convert(JSON)` of an upstream answer; anything malformed is an upstream error,
    never the caller's (the strict parser's InvalidRequestError included)."""
    try:
        return convert(orjson.loads(raw))
    except (*_INVALID, InvalidRequestError):
        raise UpstreamError("upstream provider sent an invalid response") from None


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


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body; one longer than `limit` bytes is an upstream error."""
    body = bytearray()
    async for piece in response.content.iter_any():
        body += piece
        if len(body) > limit:
            raise UpstreamError(f"upstream provider's answer is larger than {limit} bytes")
    return bytes(body)
