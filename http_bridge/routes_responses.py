"""`/v1/responses`: OpenAI's Responses API, so the `openai` SDK's `responses.create` and
`responses.stream` reach every model behind the gateway, with the same keys, limits and
ledger. Stateless for now: nothing is stored (`previous_response_id` is a 400).
A WebSocket upgrade on `GET /v1/responses` (Codex tries one first, when its provider
says it may) is refused at once with 426: the one refusal that makes a client fall
back to SSE without retrying.

The answer echoes the request's settings, so the route reads the body itself and gives
them to the door's encoders (a dialect varied per request, `dataclasses.replace`), with
the request's tool names (custom and namespaced tools mapped back) and the sealer of
reasoning items (made at start-up, on the data plane).
"""

from __future__ import annotations

import dataclasses
import functools

from fastapi import HTTPException, Request
from starlette.responses import JSONResponse, Response

from http_bridge import handlers
from http_bridge.deps import read_json
from http_bridge.doors import RESPONSES
from http_bridge.routing import Endpoints, any_json_body
from server.context import CallContext
from server.core.dataplane import DataPlane
from server.translate.responses import inbound, replies

__all__ = ["endpoints"]

endpoints = Endpoints(RESPONSES)  # served by the door's table (routing.py)

_BODY = (
    "OpenAI's Responses request (stateless: `previous_response_id` is refused); hosted "
    "tools and fields the gateway cannot carry are named in x-tandem-ignored-fields."
)


@endpoints.post(
    "/v1/responses",
    **any_json_body("Create a response (OpenAI's Responses API; named SSE events)", _BODY),
)
async def create_response(request: Request, ctx: CallContext) -> Response:
    body = await read_json(request)
    plane: DataPlane = request.app.state.plane
    sealer = plane.sealer
    dialect = RESPONSES.dialect
    chat = dataclasses.replace(
        dialect, parse_chat=functools.partial(inbound.parse_chat, sealer=sealer)
    ).read_chat(body, ctx)
    settings = inbound.settings(body)
    names = inbound.tool_names(body)
    dialect = dataclasses.replace(
        dialect,
        encode_completion=lambda answer, ctx: replies.encode_completion(
            answer, settings, names=names, sealer=sealer
        ),
        stream_encoder=lambda request, first, ctx: replies.StreamEncoder(
            first, settings, names=names, sealer=sealer
        ),
    )
    return await handlers.create_chat(request, ctx, dialect, chat)


_NO_WEBSOCKET = {
    "error": {
        "message": "the Responses API is served over HTTP here: POST /v1/responses (SSE)",
        "type": "invalid_request_error",
        "param": None,
        "code": "websocket_not_supported",
    }
}


@endpoints.route(
    "GET",
    "/v1/responses",
    summary="A WebSocket upgrade: refused with 426 (POST streams over SSE)",
    responses={426: {"description": "WebSocket not supported"}},
)
async def refuse_websocket(request: Request, ctx: CallContext) -> Response:
    if request.headers.get("upgrade", "").lower() != "websocket":
        raise HTTPException(405, headers={"allow": "POST"})
    return JSONResponse(_NO_WEBSOCKET, status_code=426)
