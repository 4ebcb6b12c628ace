"""`/v1`: OpenAI's shapes, so the official `openai` SDK works unchanged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Request
from starlette.responses import Response
from tandem.v1 import chat_pb2, embeddings_pb2

from http_bridge.deps import open_call
from http_bridge.doors import ANTHROPIC, OPENAI
from http_bridge.framing import SSE
from http_bridge.openapi_schema import completion_request_body, request_body
from http_bridge.responses import reply
from http_bridge.routing import Endpoints
from server.chunks import Chunk, Item
from server.context import CallContext
from server.translate.anthropic import replies as anthropic_replies
from server.translate.openai import inbound, replies

__all__ = ["endpoints"]


endpoints = Endpoints(OPENAI)  # its table (routing.py), and its `router` FastAPI serves

_LENIENT = "OpenAI's request shape; unknown fields are ignored, as OpenAI-compatible servers do."
_EXTRA = (
    "OpenAI's request shape; fields the proto lacks go to `openai`-kind upstreams as "
    "`extra_body` (other kinds name them in `x-tandem-ignored-fields`)."
)


def _text_completion_stream(
    request: chat_pb2.ChatCompletionRequest, first: Chunk, ctx: CallContext
) -> Callable[[Item], bytes]:
    usage = "separate" if request.stream_options.include_usage else "none"
    encoder = replies.TextStreamEncoder(first, usage=usage, prefix=SSE.prefix, suffix=SSE.suffix)
    return encoder.encode


# `/v1/completions`: the legacy text completion, a one-message chat in its own shapes
_COMPLETIONS = replace(
    OPENAI.dialect,
    parse_chat=inbound.parse_completion_request,
    encode_completion=lambda answer, ctx: replies.encode_text_completion(answer),
    stream_encoder=_text_completion_stream,
)

endpoints.chat(
    "/v1/chat/completions",
    OPENAI.dialect,
    summary="Create a chat completion (OpenAI)",
    openapi_extra=request_body(chat_pb2.ChatCompletionRequest.DESCRIPTOR, _EXTRA),
)
endpoints.chat(
    "/v1/completions",
    _COMPLETIONS,
    summary="Create a text completion (OpenAI's legacy API, as a one-message chat)",
    openapi_extra=completion_request_body(
        "OpenAI's legacy text completion: `prompt`, one string, is the user's message; "
        "`suffix`, `echo`, `best_of` and `logprobs` are refused. Fields a chat lacks "
        "go to `openai`-kind upstreams as `extra_body`, as on /v1/chat/completions."
    ),
)


async def models_call(request: Request) -> CallContext:
    """`/v1/models` serves OpenAI's clients and, by `anthropic-version`, Anthropic's."""
    return await open_call(request, ANTHROPIC if "anthropic-version" in request.headers else OPENAI)


ModelsCall = Annotated[CallContext, Depends(models_call)]


@endpoints.router.get("/v1/models", summary="List models (OpenAI)")
async def list_models(request: Request, ctx: ModelsCall) -> Response:
    models = await request.app.state.plane.list_models(ctx)
    if ctx.protocol == "anthropic":  # asked with anthropic-version
        return reply(ctx, anthropic_replies.encode_models(models))
    return reply(ctx, replies.encode_models(models, with_object=True))


@endpoints.router.get(
    "/v1/models/{model_id:path}", summary="Retrieve a model (OpenAI); ids may contain '/'"
)
async def get_model(model_id: str, request: Request, ctx: ModelsCall) -> Response:
    model = await request.app.state.plane.get_model(model_id, ctx)
    if ctx.protocol == "anthropic":
        return reply(ctx, anthropic_replies.encode_model(model))
    return reply(ctx, replies.encode_model(model, with_object=True))


endpoints.embeddings(
    "/v1/embeddings",
    OPENAI.dialect,
    summary="Create embeddings (OpenAI; float or base64)",
    openapi_extra=request_body(embeddings_pb2.EmbeddingRequest.DESCRIPTOR, _LENIENT),
)
