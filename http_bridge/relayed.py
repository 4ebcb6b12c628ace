"""`/v1/responses` for a model whose provider speaks the Responses API itself
(`responses: native`): the call relayed by the core (server/core/relay.py), its
events framed as they came, its whole answer sent as it came.

The route asks here first (`relayed_response`); None means the door translates."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.responses import Response

from http_bridge.disconnect import cancel_on_disconnect
from http_bridge.framing import NAMED_SSE
from http_bridge.responses import reply_encoded
from http_bridge.streaming import ChunkStreamResponse
from server.context import CallContext
from server.core.dataplane import DataPlane
from server.core.relay import Event
from server.errors import GatewayError

__all__ = ["relayed_response"]


class _Framed:
    """A relayed event as named SSE: its name is one the core checked (`[a-z0-9._]`,
    core/relay.py), so it cannot end its line. A stream that fails after its first
    event has been ended by the core with `response.failed` already: nothing more."""

    __slots__ = ()

    def __call__(self, event: Event) -> bytes:
        return b"event: " + event[0] + b"\ndata: " + event[1] + b"\n\n"

    def failed(self, error: GatewayError) -> bytes:
        return b""


_FRAMED = _Framed()


async def relayed_response(request: Request, ctx: CallContext, body: Any) -> Response | None:
    """The answer to a Responses request the model's upstream answers itself, or None."""
    if not isinstance(body, dict):
        return None
    plane: DataPlane = request.app.state.plane
    route = plane.relayed_route(body, ctx)
    if route is None:
        return None
    if body.get("stream") is True:
        stream = plane.stream_relayed(route, body, ctx)
        async with cancel_on_disconnect(request.receive):
            first = await anext(stream)
        return ChunkStreamResponse(first, stream, encode=_FRAMED, framing=NAMED_SSE, ctx=ctx)
    async with cancel_on_disconnect(request.receive):
        answer = await plane.create_relayed(route, body, ctx)
    return reply_encoded(ctx, answer)
