"""The translation jobs, one `typing.Protocol` each: what a dialect package provides.

Each dialect (`openai/`, `anthropic/`, `ollama/`) has the same modules under the same
names, and in them the same jobs under the same names (as Envoy AI Gateway's
`internal/translator/translator.go` declares one interface per translation):

    module            job                        name                      protocol
    inbound.py        a caller's request in      parse_chat                ChatParser
                                                 parse_embedding           EmbeddingParser
    replies.py        the caller's answer out    encode_completion         (the door's shape)
                                                 StreamEncoder             ItemEncoder
    to_provider.py    a provider's request out   encode_chat_request       ChatRequestEncoder
                                                 encode_embedding_request  EmbeddingRequestEncoder
    from_provider.py  a provider's answer in     StreamDecoder             StreamDecoderFactory
                                                 decode_completion         CompletionDecoder
                                                 decode_embeddings         EmbeddingsDecoder

A dialect that lacks a job lacks its name (Anthropic has no embeddings; Ollama's
whole answer is its stream's one line, read by its `StreamDecoder`). Each module
states its conformance at its end (`_: ChatParser = parse_chat`), so mypy checks it,
and tests/unit/translate/test_protocols.py checks that no module or name is missing. At
run time a protocol is only a name: no call goes through one. A job's dialect knobs
(OpenAI's `strict`, Anthropic's `max_tokens_default`) are keywords after the
protocol's own parameters, with a default where the dialect has one. The encoders
of a caller's answer take what the door knows of the call (the time it started, the
prompt's estimate, its framing), different for each: their shape is the door's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tandem.v1 import chat_pb2, embeddings_pb2

from server.chunks import Item

__all__ = [
    "JSON",
    "ChatParser",
    "ChatRequestEncoder",
    "CompletionDecoder",
    "EmbeddingParser",
    "EmbeddingRequestEncoder",
    "EmbeddingsDecoder",
    "ItemDecoder",
    "ItemEncoder",
    "StreamDecoderFactory",
]

JSON = dict[str, Any]


# -- a caller's side: `inbound.py` and `replies.py`


class ChatParser(Protocol):
    """A caller's chat request (its JSON body, decoded) as a proto; what the proto
    cannot take is an InvalidRequestError naming the caller's field."""

    def __call__(self, body: Any, /) -> chat_pb2.ChatCompletionRequest: ...


class EmbeddingParser(Protocol):
    """A caller's embeddings request as a proto."""

    def __call__(self, body: Any, /) -> embeddings_pb2.EmbeddingRequest: ...


class ItemEncoder(Protocol):
    """One answer's stream, written item by item (the first is always a chunk) as the
    dialect's events, framed; made per answer with what the door knows of it."""

    def encode(self, item: Item, /) -> bytes: ...


# -- a provider's side: `to_provider.py` and `from_provider.py`


class ChatRequestEncoder(Protocol):
    """A chat request as the body a provider of this kind is sent, for its model name;
    what the provider cannot honour is refused by name (InvalidRequestError)."""

    def __call__(
        self, request: chat_pb2.ChatCompletionRequest, model: str, /, *, stream: bool
    ) -> JSON: ...


class EmbeddingRequestEncoder(Protocol):
    """An embeddings request as a provider's body, for its model name."""

    def __call__(self, request: embeddings_pb2.EmbeddingRequest, model: str, /) -> JSON: ...


class ItemDecoder(Protocol):
    """One answer's stream as items: each event (decoded JSON) in, an item or None
    (nothing to say) out; the first item is a chunk. A failure the provider reports
    inside its stream is an UpstreamError."""

    def feed(self, event: Any, /) -> Item | None: ...


# a new decoder for each answer: it keeps what the stream said so far
StreamDecoderFactory = Callable[[], ItemDecoder]


class CompletionDecoder(Protocol):
    """A provider's whole (unstreamed) answer as the one chunk of an unchunked answer."""

    def __call__(self, data: Any, /) -> chat_pb2.ChatCompletionChunk: ...


class EmbeddingsDecoder(Protocol):
    """A provider's embeddings answer as a proto."""

    def __call__(self, data: Any, /) -> embeddings_pb2.EmbeddingResponse: ...
