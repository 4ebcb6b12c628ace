"""Responses written with orjson: bytes straight into the body."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from server.context import CallContext

__all__ = ["JsonResponse", "reply"]


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def reply(ctx: CallContext, body: Any) -> JsonResponse:
    """A JSON answer with the call's headers (its rate limits among them)."""
    return JsonResponse(body, headers=dict(ctx.response_headers))
