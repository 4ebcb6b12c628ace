"""`/v1`: OpenAI's shapes, so the official `openai` SDK works unchanged."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response
from tandem.v1 import chat_pb2, embeddings_pb2

from http_bridge import handlers
from http_bridge.deps import ModelsCall, openai_call
from http_bridge.dialects import OPENAI, OPENAI_COMPLETIONS
from http_bridge.openapi_schema import completion_request_body, request_body
from http_bridge.responses import reply
from http_bridge.routing import Endpoints
from server.context import CallContext
from server.translate.anthropic import replies as anthropic_replies
from server.translate.openai import replies

__all__ = ["endpoints", "router"]


router = APIRouter(prefix="/v1", tags=["openai"])  # served by FastAPI
endpoints = Endpoints(openai_call, tag="openai")  # served by the door's table (routing.py)

_LENIENT = "OpenAI's request shape; unknown fields are ignored, as OpenAI-compatible servers do."
_EXTRA = (
    "OpenAI's request shape; fields the proto lacks go to `openai`-kind upstreams as "
    "`extra_body` (other kinds name them in `x-tandem-ignored-fields`)."
)


@endpoints.post(
    f"{OPENAI.prefix}/chat/completions",
    summary="Create a chat completion (OpenAI)",
    openapi_extra=request_body(chat_pb2.ChatCompletionRequest.DESCRIPTOR, _EXTRA),
)
async def create_chat_completion(request: Request, ctx: CallContext) -> Response:
    return await handlers.create_chat(request, ctx, OPENAI)


@endpoints.post(
    f"{OPENAI.prefix}/completions",
    summary="Create a text completion (OpenAI's legacy API, as a one-message chat)",
    openapi_extra=completion_request_body(
        "OpenAI's legacy text completion: `prompt`, one string, is the user's message; "
        "`suffix`, `echo`, `best_of` and `logprobs` are refused. Fields a chat lacks "
        "go to `openai`-kind upstreams as `extra_body`, as on /v1/chat/completions."
    ),
)
async def create_completion(request: Request, ctx: CallContext) -> Response:
    return await handlers.create_chat(request, ctx, OPENAI_COMPLETIONS)


@router.get("/models", summary="List models (OpenAI)")
async def list_models(request: Request, ctx: ModelsCall) -> Response:
    models = await request.app.state.plane.list_models(ctx)
    if ctx.protocol == "anthropic":  # asked with anthropic-version
        return reply(ctx, anthropic_replies.encode_models(models))
    return reply(ctx, replies.encode_models(models, with_object=True))


@router.get("/models/{model_id:path}", summary="Retrieve a model (OpenAI); ids may contain '/'")
async def get_model(model_id: str, request: Request, ctx: ModelsCall) -> Response:
    model = await request.app.state.plane.get_model(model_id, ctx)
    if ctx.protocol == "anthropic":
        return reply(ctx, anthropic_replies.encode_model(model))
    return reply(ctx, replies.encode_model(model, with_object=True))


@endpoints.post(
    f"{OPENAI.prefix}/embeddings",
    summary="Create embeddings (OpenAI; float or base64)",
    openapi_extra=request_body(embeddings_pb2.EmbeddingRequest.DESCRIPTOR, _LENIENT),
)
async def create_embeddings(request: Request, ctx: CallContext) -> Response:
    return await handlers.create_embeddings(request, ctx, OPENAI)
