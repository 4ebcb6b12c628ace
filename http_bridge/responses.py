"""Responses written with orjson: bytes straight into the body."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from server.context import CallContext

__all__ = ["JsonResponse", "reply", "reply_encoded"]


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def reply(ctx: CallContext, body: Any) -> JsonResponse:
    """A JSON answer with the call's headers (its rate limits among them)."""
    return JsonResponse(body, headers=dict(ctx.response_headers))


def reply_encoded(
    ctx: CallContext, body: bytes | str, media_type: str = "application/json"
) -> Response:
    """`reply` for an answer already encoded (a stored response, a relayed one)."""
    return Response(body, media_type=media_type, headers=dict(ctx.response_headers))
