"""An HTTP dialect is data: how it reads requests, writes answers and frames a stream.

The handlers (`handlers.py`) are the same for every dialect; each door's record
(`doors.py`) holds its dialect, and a route may vary it (`dataclasses.replace`).
Its errors are written by its door (`Door.error_body`), not here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tandem.v1 import chat_pb2, embeddings_pb2

from http_bridge.framing import NDJSON, SSE, Framing
from server.chunks import Chunk, Item
from server.context import CallContext
from server.translate.extra import name_unread
from server.translate.ollama import replies as ollama_replies
from server.translate.openai import inbound, replies
from server.translate.protocols import JSON

__all__ = ["Dialect", "StreamEncoder", "ollama_stream", "openai_dialect"]

# (the request, its first chunk, the call) -> what writes each item as its events, framed
StreamEncoder = Callable[
    [chat_pb2.ChatCompletionRequest, Chunk, CallContext], Callable[[Item], bytes]
]


@dataclass(frozen=True, slots=True)
class Dialect:
    parse_chat: Callable[[object], chat_pb2.ChatCompletionRequest]
    encode_completion: Callable[[chat_pb2.ChatCompletion, CallContext], JSON]
    stream_encoder: StreamEncoder
    parse_embedding: Callable[[object], embeddings_pb2.EmbeddingRequest]
    encode_embeddings: Callable[
        [embeddings_pb2.EmbeddingRequest, embeddings_pb2.EmbeddingResponse], JSON
    ]
    framing: Framing
    # the model a caller named, as configured (Ollama's `name:latest`), given what is;
    # None: the name as sent
    model_name: Callable[[str, Callable[[str], bool]], str] | None = None
    # what of a parsed body the request cannot carry, named in `x-tandem-ignored-fields`
    unread: Callable[[Any], list[str]] | None = None

    def read_chat(self, body: object, ctx: CallContext) -> chat_pb2.ChatCompletionRequest:
        """The body as a chat request; what it cannot carry is named on the call."""
        chat = self.parse_chat(body)
        if self.unread is not None and (names := self.unread(body)):
            name_unread(ctx.trace, names)
        return chat


def openai_dialect(*, strict: bool) -> Dialect:
    """Native and OpenAI: one dialect, strict or not, with or without the `object` keys,
    and usage on its own chunk (OpenAI, when asked) or inline (native)."""
    with_object = not strict
    framing = SSE

    def stream_encoder(
        request: chat_pb2.ChatCompletionRequest, first: Chunk, ctx: CallContext
    ) -> Callable[[Item], bytes]:
        if strict:
            usage = "inline"
        else:
            usage = "separate" if request.stream_options.include_usage else "none"
        encoder = replies.StreamEncoder(
            first,
            with_object=with_object,
            usage=usage,
            prefix=framing.prefix,
            suffix=framing.suffix,
        )
        return encoder.encode

    return Dialect(
        parse_chat=lambda body: inbound.parse_chat(body, strict=strict),
        encode_completion=lambda answer, ctx: replies.encode_completion(
            answer, with_object=with_object
        ),
        stream_encoder=stream_encoder,
        parse_embedding=lambda body: inbound.parse_embedding(body, strict=strict),
        encode_embeddings=lambda request, answer: replies.encode_embeddings(
            answer, with_object=with_object, encoding_format=request.encoding_format or "float"
        ),
        framing=framing,
    )


def ollama_stream(*, generate: bool) -> StreamEncoder:
    """Ollama's NDJSON stream: `/api/chat`'s messages, or `/api/generate`'s text."""

    def stream_encoder(
        request: chat_pb2.ChatCompletionRequest, first: Chunk, ctx: CallContext
    ) -> Callable[[Item], bytes]:
        encoder = ollama_replies.StreamEncoder(
            first,
            generate=generate,
            started=ctx.started,
            prefix=NDJSON.prefix,
            suffix=NDJSON.suffix,
        )
        return encoder.encode

    return stream_encoder
