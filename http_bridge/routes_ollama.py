"""`/api`: Ollama's shapes, so the official `ollama` library and the tools built on it
reach every model behind the gateway, with the same auth, limits and ledger."""

from __future__ import annotations

import functools

import orjson
from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from http_bridge import handlers
from http_bridge.deps import OllamaCall, ollama_call, read_json
from http_bridge.dialects import OLLAMA, OLLAMA_EMBEDDINGS, OLLAMA_GENERATE, Dialect
from http_bridge.responses import JsonResponse, reply
from http_bridge.routing import Endpoints, any_json_body
from server.context import CallContext
from server.errors import InvalidRequestError
from server.translate.ollama import inbound as ollama_inbound
from server.translate.ollama import replies as ollama_replies

__all__ = ["endpoints", "root", "router"]


router = APIRouter(prefix=OLLAMA.prefix, tags=["ollama"])  # served by FastAPI
root = APIRouter(tags=["ollama"])  # `/`, where Ollama's clients check that it is up
endpoints = Endpoints(ollama_call, tag="ollama")  # served by the door's table (routing.py)

_BODY = "Ollama's request shape; unknown fields are ignored, as Ollama does."
_openapi = functools.partial(any_json_body, description=_BODY)


@endpoints.post(f"{OLLAMA.prefix}/chat", **_openapi("Chat (Ollama; NDJSON unless stream: false)"))
async def chat(request: Request, ctx: CallContext) -> Response:
    return await _chat_or_load(request, ctx, OLLAMA)


@endpoints.post(
    f"{OLLAMA.prefix}/generate", **_openapi("Generate from a prompt (Ollama; NDJSON by default)")
)
async def generate(request: Request, ctx: CallContext) -> Response:
    return await _chat_or_load(request, ctx, OLLAMA_GENERATE)


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
    generate = dialect is OLLAMA_GENERATE
    unload = ollama_inbound.unloads(body)
    configured = model.capabilities
    if not unload and configured is not None and "completion" not in configured:
        name = orjson.dumps(chat.model or model.name).decode()  # as Ollama's %q
        raise InvalidRequestError(
            f"{name} does not support {'generate' if generate else 'chat'}", param="model"
        )
    return reply(ctx, ollama_replies.encode_load(model.name, generate=generate, unload=unload))


@endpoints.post(f"{OLLAMA.prefix}/embed", **_openapi("Embed one input or several (Ollama)"))
async def embed(request: Request, ctx: CallContext) -> Response:
    return await handlers.create_embeddings(request, ctx, OLLAMA)


@endpoints.post(f"{OLLAMA.prefix}/embeddings", **_openapi("Embed a prompt (Ollama's older route)"))
async def embeddings(request: Request, ctx: CallContext) -> Response:
    return await handlers.create_embeddings(request, ctx, OLLAMA_EMBEDDINGS)


@endpoints.post(f"{OLLAMA.prefix}/show", **_openapi("Describe a model (Ollama)"))
async def show(request: Request, ctx: CallContext) -> Response:
    body = await read_json(request)
    name = body.get("model", body.get("name")) if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidRequestError("model: is required", param="model")
    plane = request.app.state.plane
    model = await plane.get_model(ollama_inbound.resolve_tag(name, plane.router.known), ctx)
    capabilities = await plane.capabilities(model.id, ctx)
    return reply(ctx, ollama_replies.encode_show(model, capabilities))


@router.get("/tags", summary="The models the caller may use (Ollama)")
async def tags(request: Request, ctx: OllamaCall) -> Response:
    models = await request.app.state.plane.list_models(ctx)
    return reply(ctx, ollama_replies.encode_tags(models))


@router.get("/ps", summary="The models ready to answer: all the caller may use (Ollama)")
async def ps(request: Request, ctx: OllamaCall) -> Response:
    models = await request.app.state.plane.list_models(ctx)
    return reply(ctx, ollama_replies.encode_ps(models))


@router.get("/version", summary="The Ollama API version served (no credential needed)")
async def version() -> Response:
    return JsonResponse({"version": ollama_replies.OLLAMA_VERSION})


@root.api_route(
    "/",
    methods=["GET", "HEAD"],
    response_class=PlainTextResponse,
    summary="Ollama is running (no credential needed), as Ollama says",
)
async def running() -> Response:
    return PlainTextResponse("Ollama is running")
