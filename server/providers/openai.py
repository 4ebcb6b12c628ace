"""The `openai` kind: any OpenAI-compatible server, over its own dialect."""

from __future__ import annotations

import aiohttp
from tandem.v1 import embeddings_pb2

from server.config import ProviderConfig
from server.context import CallContext
from server.providers.base import ChatRequest, Route
from server.providers.http_provider import HttpProvider, bearer
from server.translate.extra import extra_fields_of, leave_out
from server.translate.openai import from_provider, to_provider
from server.translate.protocols import JSON, CompletionDecoder

__all__ = ["OpenAIProvider"]


class OpenAIProvider(HttpProvider):
    chat_path = "/chat/completions"
    stream_decoder = from_provider.StreamDecoder

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config, headers=bearer(config.api_key))
        self._extra_fields = extra_fields_of(config.extra_fields)
        self._send_reasoning = config.send_reasoning

    def chat_body(
        self, request: ChatRequest, route: Route, ctx: CallContext, chunked: bool
    ) -> JSON:
        # Anthropic's door keeps Anthropic's fields: no OpenAI-compatible server's
        extra_fields = "deny" if ctx.protocol == "anthropic" else self._extra_fields
        left_out: list[str] = []
        body = to_provider.encode_chat_request(
            request,
            route.upstream,
            stream=chunked,
            extra_fields=extra_fields,
            send_reasoning=self._send_reasoning,
            join_texts=ctx.protocol == "anthropic",  # Anthropic's blocks, as it was sent
            left_out=left_out,
        )
        if left_out:
            leave_out(ctx.trace, left_out)
        return body

    def whole_answer(
        self, response: aiohttp.ClientResponse, chunked: bool
    ) -> CompletionDecoder | None:
        # asked not to stream, or answered with JSON anyway (an error, or `stream` ignored)
        if not chunked or response.content_type == "application/json":
            return from_provider.decode_completion
        return None

    async def embed(
        self, request: embeddings_pb2.EmbeddingRequest, route: Route, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        body = to_provider.encode_embedding_request(request, route.upstream)
        return await self.answer("/embeddings", body, ctx, from_provider.decode_embeddings)
