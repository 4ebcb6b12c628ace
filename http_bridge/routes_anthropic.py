"""`/v1/messages`: Anthropic's Messages API, so the official `anthropic` SDK and Claude
Code reach every model behind the gateway, with the same keys, limits and ledger.

`?beta=true` (Claude Code's) changes nothing: the table matches the path alone.
"""

from __future__ import annotations

import functools

from fastapi import Request
from starlette.responses import Response

from http_bridge.deps import read_json
from http_bridge.doors import ANTHROPIC
from http_bridge.responses import reply
from http_bridge.routing import Endpoints, any_json_body
from server.context import CallContext
from server.core.dataplane import DataPlane
from server.translate.anthropic import inbound

__all__ = ["endpoints"]

endpoints = Endpoints(ANTHROPIC)  # served by the door's table (routing.py)

_BODY = (
    "Anthropic's Messages request; its fields the gateway does not translate reach an "
    "Anthropic upstream as written, and other kinds name them in x-tandem-ignored-fields."
)
_openapi = functools.partial(any_json_body, description=_BODY)


endpoints.chat(
    "/v1/messages",
    ANTHROPIC.dialect,
    **_openapi("Create a message (Anthropic; named SSE events with stream: true)"),
)


@endpoints.post(
    "/v1/messages/count_tokens",
    **_openapi("Count a request's input tokens (Anthropic; the gateway's estimate)"),
)
async def count_tokens(request: Request, ctx: CallContext) -> Response:
    chat = inbound.parse_count_tokens(await read_json(request))
    plane: DataPlane = request.app.state.plane
    return reply(ctx, {"input_tokens": await plane.count_tokens(chat, ctx)})
