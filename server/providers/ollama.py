"""The `ollama` kind: an Ollama server's `/api/chat` (NDJSON) and `/api/embed`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from tandem.v1 import chat_pb2, embeddings_pb2

from server.config import ProviderConfig
from server.core.context import CallContext
from server.core.errors import UpstreamError
from server.providers.base import Route
from server.providers.upstream import UpstreamClient
from server.translate import ollama

__all__ = ["OllamaProvider"]

_INVALID = (orjson.JSONDecodeError, TypeError, ValueError, AttributeError, KeyError)


def _invalid_response() -> UpstreamError:
    return UpstreamError("upstream provider sent an invalid response")


class OllamaProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.max_retries = config.max_retries
        headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = UpstreamClient(config, headers=headers)

    async def stream(
        self,
        request: chat_pb2.ChatCompletionRequest,
        route: Route,
        ctx: CallContext,
        *,
        chunked: bool,
    ) -> AsyncIterator[chat_pb2.ChatCompletionChunk]:
        body = ollama.chat_request_to_ollama(request, route.upstream, stream=chunked)
        translator = ollama.StreamTranslator()
        async with self._client.post("/api/chat", body, ctx, streaming=chunked) as response:
            async for line in response.content:  # one JSON object per line, or the whole answer
                if not line.strip():
                    continue
                try:
                    data: Any = orjson.loads(line)
                    if "error" in data:
                        raise UpstreamError(f"upstream provider failed: {data['error']}"[:300])
                    chunk = translator.feed(data)
                except _INVALID:
                    raise _invalid_response() from None
                yield chunk

    async def embed(
        self, request: embeddings_pb2.EmbeddingRequest, route: Route, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        body = ollama.embed_request_to_ollama(request, route.upstream)
        async with self._client.post("/api/embed", body, ctx, streaming=False) as response:
            raw = await response.read()
        try:
            return ollama.embeddings_from_ollama(orjson.loads(raw))
        except _INVALID:
            raise _invalid_response() from None

    async def aclose(self) -> None:
        await self._client.aclose()
