"""`/native/v1`: the proto's JSON form, strict."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response
from tandem.v1 import chat_pb2, embeddings_pb2

from http_bridge import handlers
from http_bridge.deps import NativeCall, native_call
from http_bridge.dialects import NATIVE
from http_bridge.openapi_schema import request_body, usage_parameters
from http_bridge.responses import reply
from http_bridge.routing import Endpoints
from server.context import CallContext
from server.translate.openai import replies
from server.translate.usage import encode_usage, parse_usage_params

__all__ = ["endpoints", "router"]


router = APIRouter(prefix="/native/v1", tags=["native"])  # served by FastAPI
endpoints = Endpoints(native_call, tag="native")  # served by the door's table (routing.py)

_STRICT = (
    "The proto's fields, snake_case; an unknown field or a wrong type is a 400 naming it. "
    "OpenAI's union forms are accepted: `stop` string or list, `tool_choice` string or object, "
    "`content` string or parts."
)


@endpoints.post(
    f"{NATIVE.prefix}/chat/completions",
    summary='Create a chat completion (SSE with "stream": true)',
    openapi_extra=request_body(chat_pb2.ChatCompletionRequest.DESCRIPTOR, _STRICT, strict=True),
)
async def create_chat_completion(request: Request, ctx: CallContext) -> Response:
    return await handlers.create_chat(request, ctx, NATIVE)


@router.get("/models", summary="List the models the caller may use")
async def list_models(request: Request, ctx: NativeCall) -> Response:
    models = await request.app.state.plane.list_models(ctx)
    return reply(ctx, replies.encode_models(models, with_object=False))


@endpoints.post(
    f"{NATIVE.prefix}/embeddings",
    summary="Create embeddings",
    openapi_extra=request_body(embeddings_pb2.EmbeddingRequest.DESCRIPTOR, _STRICT, strict=True),
)
async def create_embeddings(request: Request, ctx: CallContext) -> Response:
    return await handlers.create_embeddings(request, ctx, NATIVE)


@router.get(
    "/usage",
    summary="Usage records, newest first, and totals over every match",
    description=(
        "Query parameters: `since` (inclusive) and `until` (exclusive), RFC 3339, UTC when "
        "no offset; `user` (another user's: admin keys only); `model`; `limit` 1-1000, "
        "default 100. A caller sees its own records; an admin key sees everyone's."
    ),
    openapi_extra=usage_parameters(),
)
async def get_usage(request: Request, ctx: NativeCall) -> Response:
    query = parse_usage_params(request.query_params)
    usage = await request.app.state.plane.get_usage(query, ctx)
    return reply(ctx, encode_usage(usage))
