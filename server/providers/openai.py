"""The `openai` kind: any OpenAI-compatible server, over its own dialect; with
`responses: native`, its `/responses` too, relayed (`respond`, core/relay.py)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp
from tandem.v1 import embeddings_pb2

from server.config import ProviderConfig
from server.context import CallContext
from server.errors import GatewayError, UpstreamError
from server.providers.base import ChatRequest, Route
from server.providers.failures import relayed_error, scrub_error
from server.providers.http_provider import HttpProvider, bearer
from server.providers.reads import read_at_most, sse_batches
from server.translate.extra import extra_fields_of, leave_out
from server.translate.openai import from_provider, to_provider
from server.translate.protocols import JSON, CompletionDecoder

__all__ = ["OpenAIProvider"]


class OpenAIProvider(HttpProvider):
    chat_path = "/chat/completions"
    stream_decoder = from_provider.StreamDecoder

    def __init__(self, config: ProviderConfig, *, max_answer_bytes: int) -> None:
        super().__init__(config, headers=bearer(config.api_key))
        self._extra_fields = extra_fields_of(config.extra_fields)
        self._send_reasoning = config.send_reasoning
        self.responses_native = config.responses == "native"
        # a relayed answer's bounds, as the doors bound an answer (`server.max_body_bytes`
        # of text): a whole one holds it about once, a stream's events up to 8 times
        self._max_whole_bytes = 2 * max_answer_bytes
        self._max_stream_bytes = 8 * max_answer_bytes
        self._secrets = (config.url.rstrip("/"), config.api_key or "")

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

    async def respond(
        self, body: dict[str, Any], route: Route, ctx: CallContext, *, streaming: bool
    ) -> AsyncGenerator[list[bytes], None]:
        """The caller's Responses request as it wrote it, `model` renamed (in its place);
        the answer's payloads, bounded (`_max_*_bytes`; an event by `reads`' line bound)."""
        sent = {**body, "model": route.upstream}
        async with self.client.post(
            "/responses", sent, ctx, streaming=streaming, classify=self._relayed_error
        ) as response:
            if not streaming:
                yield [await read_at_most(response, self._max_whole_bytes)]
                return
            total = 0
            async for payloads in sse_batches(response):
                total += sum(map(len, payloads))
                if total > self._max_stream_bytes:
                    raise UpstreamError(
                        f"upstream provider's answer is larger than {self._max_stream_bytes} bytes"
                    )
                yield payloads

    def scrub(self, error: dict[str, Any]) -> None:
        scrub_error(error, self._secrets)

    def _relayed_error(self, status: int, headers: Mapping[str, str], body: bytes) -> GatewayError:
        return relayed_error(status, headers, body, self._secrets)
