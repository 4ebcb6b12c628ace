"""The `ollama` kind: an Ollama server's `/api/chat` (NDJSON) and `/api/embed`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from tandem.v1 import chat_pb2, embeddings_pb2

from server.chunks import Batch, Item
from server.config import ProviderConfig
from server.context import CallContext
from server.errors import UpstreamError
from server.providers.base import Route
from server.providers.upstream import HttpProvider, bearer, decode, decoded, line_batches
from server.translate.ollama import upstream as ollama

__all__ = ["OllamaProvider"]


class OllamaProvider(HttpProvider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config, headers=bearer(config.api_key))

    async def stream(
        self,
        request: chat_pb2.ChatCompletionRequest,
        route: Route,
        ctx: CallContext,
        *,
        chunked: bool,
    ) -> AsyncIterator[Batch]:
        body = ollama.chat_request_to_ollama(request, route.upstream, stream=chunked)
        translator = ollama.StreamTranslator()

        def translate(line: Any) -> Item:
            if "error" in line:  # Ollama reports a failure mid-stream as {"error": ...}
                raise UpstreamError("upstream provider failed mid-stream")
            return translator.feed(line)

        async with self.client.post("/api/chat", body, ctx, streaming=chunked) as response:
            # one JSON object a line, or the whole answer
            async for chunks in decoded(line_batches(response), translate):
                yield chunks

    async def embed(
        self, request: embeddings_pb2.EmbeddingRequest, route: Route, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        body = ollama.embed_request_to_ollama(request, route.upstream)
        async with self.client.post("/api/embed", body, ctx, streaming=False) as response:
            raw = await response.read()
        return decode(raw, ollama.embeddings_from_ollama)
