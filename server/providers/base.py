"""The one interface every provider implements, and one some add (`DescribesModels`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tandem.v1 import chat_pb2, embeddings_pb2

from server.chunks import Batch
from server.config import ModelConfig
from server.context import CallContext

__all__ = [
    "DEFAULT_CAPABILITIES",
    "ChatRequest",
    "DescribesModels",
    "Provider",
    "RelaysResponses",
    "Route",
]

# what a model can do, in Ollama's words (`/api/show`), when nothing says more
DEFAULT_CAPABILITIES = ("completion",)

ChatRequest = chat_pb2.ChatCompletionRequest  # the short name the providers' signatures use


@dataclass(frozen=True, slots=True)
class Route:
    """A public model bound to the provider that serves it."""

    model: ModelConfig
    provider: Provider

    @property
    def upstream(self) -> str:
        return self.model.upstream_name


class Provider(Protocol):
    """An upstream that streams chat chunks and embeds texts.

    `stream` yields lists of chunks, never empty: what one upstream read
    brought, so that a door writes them at once (one `send`, not one a
    chunk) and a chunk that arrives alone leaves alone. The core sets every
    chunk's `id`, `created` and `model`; the chunk that ends the answer
    carries `usage`. With `chunked=False` the caller will fold the answer
    anyway, so a provider may deliver it whole (one chunk, e.g. from a
    non-streaming upstream call). Errors are `server.errors` classes.
    """

    name: str
    kind: str  # the config's `kind`: openai, anthropic, ollama, mock
    max_retries: int

    def stream(
        self, request: ChatRequest, route: Route, ctx: CallContext, *, chunked: bool
    ) -> AsyncGenerator[Batch, None]: ...

    async def embed(
        self, request: embeddings_pb2.EmbeddingRequest, route: Route, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class DescribesModels(Protocol):
    """A provider whose upstream says what its models can do (an Ollama server's
    `/api/show`)."""

    async def capabilities(self, upstream: str, ctx: CallContext) -> tuple[str, ...]:
        """Never fails: what the upstream says, else `DEFAULT_CAPABILITIES`."""
        ...


@runtime_checkable
class RelaysResponses(Protocol):
    """A provider that may speak OpenAI's Responses API itself (`responses: native`, an
    `openai` kind): `/v1/responses` calls for its models are relayed (core/relay.py)."""

    responses_native: bool  # the config's `responses: native`

    def respond(
        self, body: dict[str, Any], route: Route, ctx: CallContext, *, streaming: bool
    ) -> AsyncGenerator[list[bytes], None]:
        """POST the caller's `body` (its `model` renamed to `route.upstream`) to the
        upstream's `/responses`; yields a streamed answer's `data:` payloads, a list for
        each read, or the whole answer's JSON as one list of one."""
        ...

    def scrub(self, error: dict[str, Any]) -> None:
        """Make an error object of its answer fit for the caller, in place: nothing in it
        names a host or a key (providers/failures.py)."""
        ...
