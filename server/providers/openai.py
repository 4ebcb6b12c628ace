"""The `openai` kind: any OpenAI-compatible server, over its own dialect."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from tandem.v1 import chat_pb2, embeddings_pb2

from server.chunks import Batch
from server.config import ProviderConfig
from server.context import CallContext
from server.providers.base import Route
from server.providers.http_provider import HttpProvider, bearer
from server.providers.reads import decode, decoded, sse_batches
from server.translate.extra import extra_fields_of, leave_out
from server.translate.openai import from_provider, to_provider

__all__ = ["OpenAIProvider"]


class OpenAIProvider(HttpProvider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config, headers=bearer(config.api_key))
        self._extra_fields = extra_fields_of(config.extra_fields)
        self._send_reasoning = config.send_reasoning

    async def stream(
        self,
        request: chat_pb2.ChatCompletionRequest,
        route: Route,
        ctx: CallContext,
        *,
        chunked: bool,
    ) -> AsyncGenerator[Batch, None]:
        left_out: list[str] = []
        body = to_provider.encode_chat_request(
            request,
            route.upstream,
            stream=chunked,
            # Anthropic's door keeps Anthropic's fields: no OpenAI-compatible server's
            extra_fields="deny" if ctx.protocol == "anthropic" else self._extra_fields,
            send_reasoning=self._send_reasoning,
            join_texts=ctx.protocol == "anthropic",  # Anthropic's blocks, as it was sent
            left_out=left_out,
        )
        if left_out:
            leave_out(ctx.trace, left_out)
        async with self.client.post("/chat/completions", body, ctx, streaming=chunked) as response:
            if not chunked or response.content_type == "application/json":
                # asked not to stream, or answered with JSON anyway (an error, or `stream` ignored)
                yield [decode(await response.read(), from_provider.decode_completion)]
                return
            async for batch in decoded(sse_batches(response), from_provider.StreamDecoder().feed):
                yield batch

    async def embed(
        self, request: embeddings_pb2.EmbeddingRequest, route: Route, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        body = to_provider.encode_embedding_request(request, route.upstream)
        return await self.answer("/embeddings", body, ctx, from_provider.decode_embeddings)
