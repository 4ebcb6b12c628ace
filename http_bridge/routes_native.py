"""`/native/v1`: the proto's JSON form, strict."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.responses import Response
from tandem.v1 import chat_pb2, embeddings_pb2

from http_bridge.doors import NATIVE
from http_bridge.openapi_schema import request_body, usage_parameters
from http_bridge.responses import reply
from http_bridge.routing import Endpoints
from server.context import CallContext
from server.translate.openai import replies
from server.translate.usage import encode_usage, parse_usage_params

__all__ = ["endpoints"]


endpoints = Endpoints(NATIVE)  # its table (routing.py), and its `router` FastAPI serves
Call = Annotated[CallContext, Depends(endpoints.open_call)]

_STRICT = (
    "The proto's fields, snake_case; an unknown field or a wrong type is a 400 naming it. "
    "OpenAI's union forms are accepted: `stop` string or list, `tool_choice` string or object, "
    "`content` string or parts."
)

endpoints.chat(
    "/native/v1/chat/completions",
    NATIVE.dialect,
    summary='Create a chat completion (SSE with "stream": true)',
    openapi_extra=request_body(chat_pb2.ChatCompletionRequest.DESCRIPTOR, _STRICT, strict=True),
)
endpoints.embeddings(
    "/native/v1/embeddings",
    NATIVE.dialect,
    summary="Create embeddings",
    openapi_extra=request_body(embeddings_pb2.EmbeddingRequest.DESCRIPTOR, _STRICT, strict=True),
)


@endpoints.router.get("/native/v1/models", summary="List the models the caller may use")
async def list_models(request: Request, ctx: Call) -> Response:
    models = await request.app.state.plane.list_models(ctx)
    return reply(ctx, replies.encode_models(models, with_object=False, with_price=True))


@endpoints.router.get(
    "/native/v1/usage",
    summary="Usage records, newest first, and totals over every match",
    description=(
        "Query parameters: `since` (inclusive) and `until` (exclusive), RFC 3339, UTC when "
        "no offset; `user` (another user's: admin keys only); `model`; `limit` 1-1000, "
        "default 100. A caller sees its own records; an admin key sees everyone's."
    ),
    openapi_extra=usage_parameters(),
)
async def get_usage(request: Request, ctx: Call) -> Response:
    query = parse_usage_params(request.query_params)
    usage = await request.app.state.plane.get_usage(query, ctx)
    return reply(ctx, encode_usage(usage))
