"""An HTTP dialect is data: how it reads requests, writes answers, frames a stream,
spells an error, and which protocol its calls are recorded as.

The handlers (`handlers.py`) are the same for every dialect; a door is a
path prefix, a `Dialect`, and the routes that join them (`routes_*.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from tandem.v1 import chat_pb2, embeddings_pb2

from http_bridge.errors import error_body
from http_bridge.framing import SSE, Framing
from server.context import Protocol
from server.errors import GatewayError
from server.translate.openai import inbound, replies

__all__ = ["NATIVE", "OPENAI", "Dialect", "StreamEncoder"]

JSON = dict[str, Any]
Chunk = chat_pb2.ChatCompletionChunk
# (the request, its first chunk) -> what writes each chunk as its events, framed
StreamEncoder = Callable[[chat_pb2.ChatCompletionRequest, Chunk], Callable[[Chunk], bytes]]


@dataclass(frozen=True, slots=True)
class Dialect:
    prefix: str  # of its routes' paths
    protocol: Protocol  # recorded on every usage record of its calls
    parse_chat: Callable[[object], chat_pb2.ChatCompletionRequest]
    encode_completion: Callable[[chat_pb2.ChatCompletion], JSON]
    stream_encoder: StreamEncoder
    parse_embedding: Callable[[object], embeddings_pb2.EmbeddingRequest]
    encode_embeddings: Callable[
        [embeddings_pb2.EmbeddingRequest, embeddings_pb2.EmbeddingResponse], JSON
    ]
    framing: Framing
    error_body: Callable[[GatewayError], JSON]

    def error_payload(self, error: GatewayError) -> bytes:
        """The error event's payload, for a stream that fails after its first event."""
        return orjson.dumps(self.error_body(error))


def _openai_family(*, strict: bool, prefix: str, protocol: Protocol) -> Dialect:
    """Native and OpenAI: one dialect, strict or not, with or without the `object` keys,
    and usage on its own chunk (OpenAI, when asked) or inline (native)."""
    with_object = not strict
    framing = SSE

    def stream_encoder(
        request: chat_pb2.ChatCompletionRequest, first: Chunk
    ) -> Callable[[Chunk], bytes]:
        if strict:
            usage = "inline"
        else:
            usage = "separate" if request.stream_options.include_usage else "none"
        encoder = replies.ChunkEncoder(
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
        parse_chat=lambda body: inbound.parse_chat_request(body, strict=strict),
        encode_completion=lambda answer: replies.encode_completion(answer, with_object=with_object),
        stream_encoder=stream_encoder,
        parse_embedding=lambda body: inbound.parse_embedding_request(body, strict=strict),
        encode_embeddings=lambda request, answer: replies.encode_embeddings(
            answer, with_object=with_object, encoding_format=request.encoding_format or "float"
        ),
        framing=framing,
        error_body=error_body,
    )


NATIVE = _openai_family(strict=True, prefix="/native/v1", protocol="native")
OPENAI = _openai_family(strict=False, prefix="/v1", protocol="openai")
