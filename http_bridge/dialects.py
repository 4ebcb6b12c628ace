"""An HTTP dialect is data: how it reads requests, writes answers, frames a stream,
spells an error, and which protocol its calls are recorded as.

The handlers (`handlers.py`) are the same for every dialect; a door is a
path prefix, a `Dialect`, and the routes that join them (`routes_*.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from tandem.v1 import chat_pb2, embeddings_pb2

from http_bridge.errors import error_body
from http_bridge.framing import NAMED_SSE, NDJSON, SSE, Framing
from server.chunks import Chunk, Item
from server.context import CallContext, Protocol
from server.errors import GatewayError, NotFoundError
from server.translate.anthropic import inbound as anthropic_inbound
from server.translate.anthropic import replies as anthropic_replies
from server.translate.extra import name_unread
from server.translate.ollama import inbound as ollama_inbound
from server.translate.ollama import replies as ollama_replies
from server.translate.openai import inbound, replies

__all__ = [
    "ANTHROPIC",
    "NATIVE",
    "OLLAMA",
    "OLLAMA_EMBEDDINGS",
    "OLLAMA_GENERATE",
    "OPENAI",
    "OPENAI_COMPLETIONS",
    "Dialect",
    "StreamEncoder",
]

JSON = dict[str, Any]
# (the request, its first chunk, the call) -> what writes each item as its events, framed
StreamEncoder = Callable[
    [chat_pb2.ChatCompletionRequest, Chunk, CallContext], Callable[[Item], bytes]
]


@dataclass(frozen=True, slots=True)
class Dialect:
    prefix: str  # of its routes' paths
    protocol: Protocol  # recorded on every usage record of its calls
    parse_chat: Callable[[object], chat_pb2.ChatCompletionRequest]
    encode_completion: Callable[[chat_pb2.ChatCompletion, CallContext], JSON]
    stream_encoder: StreamEncoder
    parse_embedding: Callable[[object], embeddings_pb2.EmbeddingRequest]
    encode_embeddings: Callable[
        [embeddings_pb2.EmbeddingRequest, embeddings_pb2.EmbeddingResponse], JSON
    ]
    framing: Framing
    error_body: Callable[[GatewayError], JSON]
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

    def error_payload(self, error: GatewayError) -> bytes:
        """The error event's payload, for a stream that fails after its first event."""
        return orjson.dumps(self.error_body(error))


def _openai_family(*, strict: bool, prefix: str, protocol: Protocol) -> Dialect:
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
        prefix=prefix,
        protocol=protocol,
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
        error_body=error_body,
    )


NATIVE = _openai_family(strict=True, prefix="/native/v1", protocol="native")
OPENAI = _openai_family(strict=False, prefix="/v1", protocol="openai")


def _text_completion_stream(
    request: chat_pb2.ChatCompletionRequest, first: Chunk, ctx: CallContext
) -> Callable[[Item], bytes]:
    usage = "separate" if request.stream_options.include_usage else "none"
    encoder = replies.TextStreamEncoder(first, usage=usage, prefix=SSE.prefix, suffix=SSE.suffix)
    return encoder.encode


# `/v1/completions`: the legacy text completion, a one-message chat in its own shapes
OPENAI_COMPLETIONS = replace(
    OPENAI,
    parse_chat=inbound.parse_completion_request,
    encode_completion=lambda answer, ctx: replies.encode_text_completion(answer),
    stream_encoder=_text_completion_stream,
)


def _ollama_stream(*, generate: bool) -> StreamEncoder:
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


# `/api/chat` and `/api/embed`; `/api/generate` and the older `/api/embeddings` differ in
# their shapes only
OLLAMA = Dialect(
    prefix="/api",
    protocol="ollama",
    parse_chat=ollama_inbound.parse_chat,
    encode_completion=lambda answer, ctx: ollama_replies.encode_completion(answer, ctx.started),
    stream_encoder=_ollama_stream(generate=False),
    parse_embedding=ollama_inbound.parse_embedding,
    encode_embeddings=ollama_replies.encode_embed,
    framing=NDJSON,
    error_body=lambda error: error_body(error, spelling="ollama"),
    model_name=ollama_inbound.resolve_tag,
)
OLLAMA_GENERATE = replace(
    OLLAMA,
    parse_chat=ollama_inbound.parse_generate,
    encode_completion=lambda answer, ctx: ollama_replies.encode_generate(answer, ctx.started),
    stream_encoder=_ollama_stream(generate=True),
)
OLLAMA_EMBEDDINGS = replace(
    OLLAMA,
    parse_embedding=ollama_inbound.parse_legacy_embeddings,
    encode_embeddings=ollama_replies.encode_embeddings,
)


def _no_embeddings(body: object) -> embeddings_pb2.EmbeddingRequest:
    raise NotFoundError("Anthropic's Messages API has no embeddings")


# `/v1/messages`: Anthropic's shapes over the same handlers
ANTHROPIC = Dialect(
    prefix="/v1",
    protocol="anthropic",
    parse_chat=anthropic_inbound.parse_chat,
    encode_completion=lambda answer, ctx: anthropic_replies.encode_completion(answer),
    # the core left its prompt estimate on the trace, before the first chunk
    stream_encoder=lambda request, first, ctx: (
        anthropic_replies.StreamEncoder(ctx.trace.prompt_estimate).encode
    ),
    parse_embedding=_no_embeddings,
    encode_embeddings=lambda request, answer: {},
    framing=NAMED_SSE,
    error_body=lambda error: error_body(error, spelling="anthropic"),
    unread=anthropic_inbound.unread,
)
