"""Responses written with orjson: bytes straight into the body."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from server.core.context import CallContext

__all__ = ["JsonResponse", "reply"]


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def reply(request: Request, ctx: CallContext, body: Any) -> JsonResponse:
    """A JSON answer to a call the policy did not admit (listings): its rate-limit headers too."""
    await request.app.state.policy.add_headers(ctx)
    return JsonResponse(body, headers=dict(ctx.response_headers))
