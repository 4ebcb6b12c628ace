"""The `anthropic` kind: Anthropic's Messages API, translated both ways."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from tandem.v1 import chat_pb2, embeddings_pb2

from server.config import ProviderConfig
from server.core.context import CallContext
from server.core.errors import InvalidRequestError, UpstreamError
from server.providers.base import Route
from server.providers.upstream import UpstreamClient, sse_data
from server.translate import anthropic

__all__ = ["AnthropicProvider"]

_INVALID = (orjson.JSONDecodeError, TypeError, ValueError, AttributeError, KeyError)


class AnthropicProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.name = config.name
        self.max_retries = config.max_retries
        headers = {"anthropic-version": anthropic.ANTHROPIC_VERSION}
        if config.api_key:
            headers["x-api-key"] = config.api_key
        self._client = UpstreamClient(config, headers=headers)

    async def stream(
        self,
        request: chat_pb2.ChatCompletionRequest,
        route: Route,
        ctx: CallContext,
        *,
        chunked: bool,
    ) -> AsyncIterator[chat_pb2.ChatCompletionChunk]:
        body = anthropic.chat_request_to_anthropic(
            request,
            route.upstream,
            max_tokens_default=route.model.max_tokens_default,
            stream=chunked,
        )
        async with self._client.post("/v1/messages", body, ctx, streaming=chunked) as response:
            if not chunked:
                raw = await response.read()
                try:
                    chunk = anthropic.message_as_chunk(orjson.loads(raw))
                except _INVALID:
                    raise UpstreamError("upstream provider sent an invalid response") from None
                yield chunk
                return
            translator = anthropic.StreamTranslator()
            async for data in sse_data(response):
                try:
                    event: Any = orjson.loads(data)
                    translated = translator.feed(event)
                except _INVALID:
                    raise UpstreamError("upstream provider sent an invalid response") from None
                if translated is not None:
                    yield translated

    async def embed(
        self, request: embeddings_pb2.EmbeddingRequest, route: Route, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        raise InvalidRequestError(
            f"model {route.model.name!r} does not make embeddings", param="model"
        )

    async def aclose(self) -> None:
        await self._client.aclose()
