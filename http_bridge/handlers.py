"""Chat and embeddings over HTTP: the same handlers for every dialect (dialects.py)."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response
from tandem.v1 import chat_pb2

from http_bridge.deps import read_json
from http_bridge.dialects import Dialect
from http_bridge.disconnect import cancel_on_disconnect
from http_bridge.responses import reply
from http_bridge.streaming import ChunkStreamResponse
from server.context import CallContext
from server.core.dataplane import DataPlane

__all__ = ["create_chat", "create_embeddings"]


async def create_chat(
    request: Request,
    ctx: CallContext,
    dialect: Dialect,
    chat: chat_pb2.ChatCompletionRequest | None = None,
) -> Response:
    """The answer to a chat: `chat` if the route has parsed it, else the body's."""
    if chat is None:
        chat = dialect.read_chat(await read_json(request), ctx)
    plane: DataPlane = request.app.state.plane
    if dialect.model_name is not None:
        chat.model = dialect.model_name(chat.model, plane.router.known)
    if not chat.stream:
        async with cancel_on_disconnect(request.receive):
            completion = await plane.create_chat(chat, ctx)
        return reply(ctx, dialect.encode_completion(completion, ctx))

    stream = plane.stream_chat(chat, ctx)
    async with cancel_on_disconnect(request.receive):
        first = await anext(stream)
    head = first[0]
    assert not isinstance(head, str)  # a stream opens with a chunk (server/chunks.py)
    try:
        encode = dialect.stream_encoder(chat, head, ctx)
    except BaseException:  # the response that would close the stream is never made
        await stream.aclose()
        raise
    return ChunkStreamResponse(
        first,
        stream,
        encode=encode,
        framing=dialect.framing,
        ctx=ctx,
    )


async def create_embeddings(request: Request, ctx: CallContext, dialect: Dialect) -> Response:
    embedding = dialect.parse_embedding(await read_json(request))
    plane: DataPlane = request.app.state.plane
    if dialect.model_name is not None:
        embedding.model = dialect.model_name(embedding.model, plane.router.known)
    async with cancel_on_disconnect(request.receive):
        response = await plane.embed(embedding, ctx)
    return reply(ctx, dialect.encode_embeddings(embedding, response))
