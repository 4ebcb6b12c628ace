"""The `openai` kind: any OpenAI-compatible server, over its own dialect."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from tandem.v1 import chat_pb2, embeddings_pb2

from server.config import ProviderConfig
from server.core.context import CallContext
from server.core.errors import UpstreamError
from server.providers.base import Route
from server.providers.upstream import UpstreamClient, sse_data
from server.translate import openai

__all__ = ["OpenAIProvider"]

_INVALID = (orjson.JSONDecodeError, TypeError, ValueError, AttributeError, KeyError)


def _invalid_response() -> UpstreamError:
    return UpstreamError("upstream provider sent an invalid response")


class OpenAIProvider:
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
        body = openai.chat_request_to_openai(request, route.upstream, stream=chunked)
        async with self._client.post("/chat/completions", body, ctx, streaming=chunked) as response:
            if not chunked:
                raw = await response.read()
                try:
                    chunk = openai.completion_as_chunk(orjson.loads(raw))
                except _INVALID:
                    raise _invalid_response() from None
                yield chunk
                return
            async for data in sse_data(response):
                try:
                    event: Any = orjson.loads(data)
                    chunk = openai.chunk_from_openai(event)
                except _INVALID:
                    raise _invalid_response() from None
                yield chunk

    async def embed(
        self, request: embeddings_pb2.EmbeddingRequest, route: Route, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        body = openai.embedding_request_to_openai(request, route.upstream)
        async with self._client.post("/embeddings", body, ctx, streaming=False) as response:
            raw = await response.read()
        try:
            return openai.embeddings_from_openai(orjson.loads(raw))
        except _INVALID:
            raise _invalid_response() from None

    async def aclose(self) -> None:
        await self._client.aclose()
