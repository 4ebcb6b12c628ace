"""Chat and embeddings over HTTP, shared by the native and OpenAI routes.

The two dialects differ only in strictness (native refuses unknown fields),
the `object` keys, and where a stream's usage goes.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from fastapi import Request
from starlette.responses import Response

from http_bridge.deps import read_json
from http_bridge.disconnect import cancel_on_disconnect
from http_bridge.errors import error_body
from http_bridge.framing import SSE
from http_bridge.responses import JsonResponse
from http_bridge.streaming import ChunkStreamResponse
from server.context import CallContext
from server.core.dataplane import DataPlane
from server.errors import GatewayError
from server.translate.openai import inbound, replies

__all__ = ["NATIVE", "OPENAI", "Dialect", "create_chat", "create_embeddings"]


@dataclass(frozen=True, slots=True)
class Dialect:
    strict: bool
    with_object: bool


NATIVE = Dialect(strict=True, with_object=False)
OPENAI = Dialect(strict=False, with_object=True)


def _error_payload(error: GatewayError) -> bytes:
    return orjson.dumps(error_body(error))


async def create_chat(request: Request, ctx: CallContext, dialect: Dialect) -> Response:
    chat = inbound.parse_chat_request(await read_json(request), strict=dialect.strict)
    plane: DataPlane = request.app.state.plane
    if not chat.stream:
        async with cancel_on_disconnect(request.receive):
            completion = await plane.create_chat(chat, ctx)
        body = replies.encode_completion(completion, with_object=dialect.with_object)
        return JsonResponse(body, headers=dict(ctx.response_headers))

    if dialect.strict:
        usage = "inline"
    else:
        usage = "separate" if chat.stream_options.include_usage else "none"
    stream = plane.stream_chat(chat, ctx)
    async with cancel_on_disconnect(request.receive):
        first = await anext(stream)
    encoder = replies.ChunkEncoder(
        first, with_object=dialect.with_object, usage=usage, prefix=SSE.prefix, suffix=SSE.suffix
    )
    return ChunkStreamResponse(
        first,
        stream,
        encode=encoder.encode,
        framing=SSE,
        error_payload=_error_payload,
        headers=ctx.response_headers,
        request_id=ctx.request_id,
    )


async def create_embeddings(request: Request, ctx: CallContext, dialect: Dialect) -> Response:
    embedding = inbound.parse_embedding_request(await read_json(request), strict=dialect.strict)
    plane: DataPlane = request.app.state.plane
    async with cancel_on_disconnect(request.receive):
        response = await plane.embed(embedding, ctx)
    body = replies.encode_embeddings(
        response,
        with_object=dialect.with_object,
        encoding_format=embedding.encoding_format or "float",
    )
    return JsonResponse(body, headers=dict(ctx.response_headers))
