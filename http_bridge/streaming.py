"""A streamed answer (SSE or NDJSON) that has already produced its first chunks.

The route awaits the first batch before building this response, so every
failure up to then is a plain error status; from here on the status is 200
and a failure is one in-band error event with no end marker.

Each batch (what one upstream read brought) leaves in one `send`: ten events
that arrived together cost one write, and an event that arrives alone is
written at once. An encoder with an async `finish` writes the stream's end itself,
after work that must be done before it (the Responses API stores a response
before its last event); what `finish` raises fails the stream like any error.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Generic, TypeVar

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from http_bridge.disconnect import ClientDisconnected, cancel_on_disconnect
from http_bridge.doors import door_named
from http_bridge.errors import HTTP_STATUS
from http_bridge.framing import Framing
from server.context import CallContext
from server.errors import GatewayError, InternalError

__all__ = ["ChunkStreamResponse"]

E = TypeVar("E")  # what the stream carries: chunks (server/chunks.py), or relayed events

logger = logging.getLogger("tandem.http")


def _encoded(encode: Callable[[E], bytes], batch: Sequence[E]) -> bytes:
    return encode(batch[0]) if len(batch) == 1 else b"".join([encode(c) for c in batch])


class ChunkStreamResponse(Response, Generic[E]):
    """The rest of a call's stream, `encode`d and framed; a failure is spelled by the
    call's door (its protocol), or by an encoder that has a `failed` of its own (the
    Responses API's `response.failed`, which names the response), and left on its trace
    for the access line."""

    def __init__(
        self,
        first: Sequence[E],
        rest: AsyncGenerator[Sequence[E], None],
        *,
        encode: Callable[[E], bytes],
        framing: Framing,
        ctx: CallContext,
    ) -> None:
        self.status_code = 200
        self.background: BackgroundTask | None = None
        self._first = first
        self._rest = rest
        self._encode = encode
        self._framing = framing
        self._ctx = ctx
        self._raw_headers = [
            (b"content-type", framing.media_type),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *((k.encode(), v.encode()) for k, v in ctx.response_headers),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        encode = self._encode
        try:  # the stream is closed however this ends, its head's send included
            await send({"type": "http.response.start", "status": 200, "headers": self._raw_headers})
            async with cancel_on_disconnect(receive):
                body = _encoded(encode, self._first)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                try:
                    async for batch in self._rest:  # each batch leaves as soon as it is ready
                        body = _encoded(encode, batch)
                        await send({"type": "http.response.body", "body": body, "more_body": True})
                    finish = getattr(encode, "finish", None)
                    end = self._framing.end if finish is None else await finish()
                except GatewayError as exc:
                    end = self._failed(exc, HTTP_STATUS[type(exc)])
                except Exception:
                    logger.exception("request %s failed mid-stream", self._ctx.request_id)
                    end = self._failed(InternalError("internal error"), 500)
                await send({"type": "http.response.body", "body": end, "more_body": False})
        except ClientDisconnected:
            self._ctx.trace.failed(499)  # the client went away mid-stream
            return
        finally:
            await self._rest.aclose()

    def _failed(self, error: GatewayError, status: int) -> bytes:
        """The error event that ends the stream, its status left for the access line."""
        self._ctx.trace.failed(status)
        failed = getattr(self._encode, "failed", None)  # an encoder that writes its own
        if failed is not None:
            written: bytes = failed(error)
            return written
        body = door_named(self._ctx.protocol).error_body(error)
        return self._framing.event(orjson.dumps(body))
