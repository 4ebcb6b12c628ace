"""A streamed answer (SSE or NDJSON) that has already produced its first chunks.

The route awaits the first batch before building this response, so every
failure up to then is a plain error status; from here on the status is 200
and a failure is one in-band error event with no end marker.

Each batch (what one upstream read brought) leaves in one `send`: ten events
that arrived together cost one write, and an event that arrives alone is
written at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from http_bridge.disconnect import ClientDisconnected, cancel_on_disconnect
from http_bridge.errors import HTTP_STATUS
from http_bridge.framing import Framing
from server.chunks import Batch, Item
from server.context import CallTrace
from server.errors import GatewayError, InternalError

__all__ = ["ChunkStreamResponse"]

logger = logging.getLogger("tandem.http")


def _encoded(encode: Callable[[Item], bytes], batch: Batch) -> bytes:
    return encode(batch[0]) if len(batch) == 1 else b"".join([encode(c) for c in batch])


class ChunkStreamResponse(Response):
    def __init__(
        self,
        first: Batch,
        rest: AsyncGenerator[Batch, None],
        *,
        encode: Callable[[Item], bytes],
        framing: Framing,
        error_payload: Callable[[GatewayError], bytes],
        headers: list[tuple[str, str]],
        trace: CallTrace,
        request_id: str,
    ) -> None:
        self.status_code = 200
        self.background: BackgroundTask | None = None
        self._first = first
        self._rest = rest
        self._encode = encode
        self._framing = framing
        self._error_payload = error_payload
        self._trace = trace
        self._request_id = request_id
        self._raw_headers = [
            (b"content-type", framing.media_type),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *((k.encode(), v.encode()) for k, v in headers),
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
                    end = self._framing.end
                except GatewayError as exc:
                    self._trace.failed(HTTP_STATUS[type(exc)])
                    end = self._framing.event(self._error_payload(exc))
                except Exception:
                    logger.exception("request %s failed mid-stream", self._request_id)
                    self._trace.failed(500)
                    end = self._framing.event(self._error_payload(InternalError("internal error")))
                await send({"type": "http.response.body", "body": end, "more_body": False})
        except ClientDisconnected:
            self._trace.failed(499)  # the client went away mid-stream
            return
        finally:
            await self._rest.aclose()
