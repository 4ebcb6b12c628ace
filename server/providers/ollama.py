"""The `ollama` kind: an Ollama server's `/api/chat` (NDJSON), `/api/embed`, and
`/api/show` for what a model can do."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator

import aiohttp
from tandem.v1 import embeddings_pb2

from server.config import ProviderConfig
from server.context import CallContext
from server.errors import GatewayError, UpstreamError
from server.providers.base import DEFAULT_CAPABILITIES, ChatRequest, Route
from server.providers.http_provider import HttpProvider, bearer
from server.providers.reads import decode, line_batches, read_at_most
from server.translate.extra import leave_out_extra_body
from server.translate.ollama import from_provider, to_provider
from server.translate.protocols import JSON

__all__ = ["OllamaProvider"]

logger = logging.getLogger("tandem.providers")

# what `/api/show` said is kept this long (a model pulled again under its name may
# change); a failure's fallback for less, so a server that was down is asked again soon
CAPABILITIES_TTL_S = 300.0
FALLBACK_TTL_S = 30.0
SHOW_TIMEOUT_S = 5.0  # `/api/show` reads a model's metadata: quick, unless it is not answering
MAX_SHOW_BYTES = 1 << 20  # a model's licence, template and metadata: far less


class OllamaProvider(HttpProvider):
    chat_path = "/api/chat"
    stream_decoder = from_provider.StreamDecoder

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config, headers=bearer(config.api_key))
        self._capabilities: dict[str, tuple[float, tuple[str, ...]]] = {}  # model -> until, them

    def chat_body(
        self, request: ChatRequest, route: Route, ctx: CallContext, chunked: bool
    ) -> JSON:
        leave_out_extra_body(request, ctx.trace)
        return to_provider.encode_chat_request(request, route.upstream, stream=chunked)

    def frames(self, response: aiohttp.ClientResponse) -> AsyncGenerator[list[bytes], None]:
        return line_batches(response)  # one JSON object a line, or the whole answer

    async def embed(
        self, request: embeddings_pb2.EmbeddingRequest, route: Route, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        body = to_provider.encode_embedding_request(request, route.upstream)
        return await self.answer("/api/embed", body, ctx, from_provider.decode_embeddings)

    async def capabilities(self, upstream: str, ctx: CallContext) -> tuple[str, ...]:
        """What the server's `/api/show` says `upstream` can do, kept a while; if it
        cannot say, `DEFAULT_CAPABILITIES` (logged, kept a shorter while)."""
        cached = self._capabilities.get(upstream)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            async with asyncio.timeout(SHOW_TIMEOUT_S):
                found, ttl = await self._show(upstream, ctx), CAPABILITIES_TTL_S
        except (GatewayError, TimeoutError) as exc:
            why = (
                str(exc) if isinstance(exc, GatewayError) else f"no answer in {SHOW_TIMEOUT_S:g} s"
            )
            logger.warning(
                "provider %r: /api/show of model %r failed (%s); its capabilities: %s",
                self.name,
                upstream,
                why,
                list(DEFAULT_CAPABILITIES),
            )
            found, ttl = DEFAULT_CAPABILITIES, FALLBACK_TTL_S
        self._capabilities[upstream] = (time.monotonic() + ttl, found)
        return found

    async def _show(self, upstream: str, ctx: CallContext) -> tuple[str, ...]:
        async with self.client.post("/api/show", {"model": upstream}, ctx, streaming=False) as (
            response
        ):
            raw = await read_at_most(response, MAX_SHOW_BYTES)
        found = decode(raw, from_provider.capabilities_from_show)
        if found is None:
            raise UpstreamError("upstream provider's answer names no capabilities")
        return found
