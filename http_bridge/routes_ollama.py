"""`/api`: Ollama's shapes, so the official `ollama` library and the tools built on it
reach every model behind the gateway, with the same auth, limits and ledger."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Annotated

import orjson
from fastapi import Depends, Request
from starlette.responses import PlainTextResponse, Response

from http_bridge import handlers
from http_bridge.deps import read_json
from http_bridge.dialects import Dialect, ollama_stream
from http_bridge.doors import OLLAMA
from http_bridge.responses import JsonResponse, reply
from http_bridge.routing import Endpoints, any_json_body
from server.context import CallContext
from server.errors import InvalidRequestError
from server.translate.ollama import inbound as ollama_inbound
from server.translate.ollama import replies as ollama_replies

__all__ = ["endpoints"]


endpoints = Endpoints(OLLAMA)  # its table (routing.py), and its `router` FastAPI serves
Call = Annotated[CallContext, Depends(endpoints.open_call)]

# `/api/chat` and `/api/embed` speak the door's dialect; `/api/generate` and the older
# `/api/embeddings` differ in their shapes only
_GENERATE = replace(
    OLLAMA.dialect,
    parse_chat=ollama_inbound.parse_generate,
    encode_completion=lambda answer, ctx: ollama_replies.encode_generate(answer, ctx.started),
    stream_encoder=ollama_stream(generate=True),
)
_EMBEDDINGS = replace(
    OLLAMA.dialect,
    parse_embedding=ollama_inbound.parse_legacy_embeddings,
    encode_embeddings=ollama_replies.encode_embeddings,
)

_BODY = "Ollama's request shape; unknown fields are ignored, as Ollama does."
_openapi = functools.partial(any_json_body, description=_BODY)


@endpoints.post("/api/chat", **_openapi("Chat (Ollama; NDJSON unless stream: false)"))
async def chat(request: Request, ctx: CallContext) -> Response:
    return await _chat_or_load(request, ctx, OLLAMA.dialect)


@endpoints.post("/api/generate", **_openapi("Generate from a prompt (Ollama; NDJSON by default)"))
async def generate(request: Request, ctx: CallContext) -> Response:
    return await _chat_or_load(request, ctx, _GENERATE)


async def _chat_or_load(request: Request, ctx: CallContext, dialect: Dialect) -> Response:
    """A chat, or, with no messages (a generate with no prompt), Ollama's load (with a
    zero `keep_alive`, its unload): the model's access checked and one request counted,
    nothing generated or charged. As in Ollama, a model configured without `completion`
    cannot be loaded (a 400), but can be unloaded."""
    body = await read_json(request)
    chat = dialect.read_chat(body, ctx)
    if chat.messages:
        return await handlers.create_chat(request, ctx, dialect, chat)
    plane = request.app.state.plane
    model = await plane.admit_model(ollama_inbound.resolve_tag(chat.model, plane.router.known), ctx)
    generate = dialect is _GENERATE
    unload = ollama_inbound.unloads(body)
    configured = model.capabilities
    if not unload and configured is not None and "completion" not in configured:
        name = orjson.dumps(chat.model or model.name).decode()  # as Ollama's %q
        raise InvalidRequestError(
            f"{name} does not support {'generate' if generate else 'chat'}", param="model"
        )
    return reply(ctx, ollama_replies.encode_load(model.name, generate=generate, unload=unload))


endpoints.embeddings(
    "/api/embed", OLLAMA.dialect, **_openapi("Embed one input or several (Ollama)")
)
endpoints.embeddings(
    "/api/embeddings", _EMBEDDINGS, **_openapi("Embed a prompt (Ollama's older route)")
)


@endpoints.post("/api/show", **_openapi("Describe a model (Ollama)"))
async def show(request: Request, ctx: CallContext) -> Response:
    body = await read_json(request)
    name = body.get("model", body.get("name")) if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidRequestError("model: is required", param="model")
    plane = request.app.state.plane
    model = await plane.get_model(ollama_inbound.resolve_tag(name, plane.router.known), ctx)
    capabilities = await plane.capabilities(model.id, ctx)
    return reply(ctx, ollama_replies.encode_show(model, capabilities))


@endpoints.router.get("/api/tags", summary="The models the caller may use (Ollama)")
async def tags(request: Request, ctx: Call) -> Response:
    models = await request.app.state.plane.list_models(ctx)
    return reply(ctx, ollama_replies.encode_tags(models))


@endpoints.router.get(
    "/api/ps", summary="The models ready to answer: all the caller may use (Ollama)"
)
async def ps(request: Request, ctx: Call) -> Response:
    models = await request.app.state.plane.list_models(ctx)
    return reply(ctx, ollama_replies.encode_ps(models))


@endpoints.router.get(
    "/api/version", summary="The Ollama API version served (no credential needed)"
)
async def version() -> Response:
    return JsonResponse({"version": ollama_replies.OLLAMA_VERSION})


@endpoints.router.api_route(
    "/",
    methods=["GET", "HEAD"],
    response_class=PlainTextResponse,
    summary="Ollama is running (no credential needed), as Ollama says",
)
async def running() -> Response:
    return PlainTextResponse("Ollama is running")
