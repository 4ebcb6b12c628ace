"""The `anthropic` kind: Anthropic's Messages API, translated both ways; the caller's
`anthropic-beta` goes with every attempt (retries and fallbacks alike), and so do the
fields the Anthropic door kept for it (`context_management`, ...), as far as
`extra_fields` lets them: another door's extra fields are another dialect's, left out."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from tandem.v1 import embeddings_pb2

from server.config import ProviderConfig
from server.context import CallContext
from server.errors import InvalidRequestError, echoed
from server.providers.base import ChatRequest, Route
from server.providers.http_provider import HttpProvider
from server.translate.anthropic import from_provider, to_provider
from server.translate.extra import extra_fields_of, leave_out
from server.translate.protocols import JSON, CompletionDecoder

__all__ = ["AnthropicProvider"]


class AnthropicProvider(HttpProvider):
    chat_path = "/v1/messages"
    stream_decoder = from_provider.StreamDecoder

    def __init__(self, config: ProviderConfig) -> None:
        headers = {"anthropic-version": to_provider.ANTHROPIC_VERSION}
        if config.api_key:
            headers["x-api-key"] = config.api_key
        super().__init__(config, headers=headers)
        self._extra_fields = extra_fields_of(config.extra_fields)

    def chat_body(
        self, request: ChatRequest, route: Route, ctx: CallContext, chunked: bool
    ) -> JSON:
        # another door's extra fields are another dialect's
        extra_fields = self._extra_fields if ctx.protocol == "anthropic" else "deny"
        left_out: list[str] = []
        body = to_provider.encode_chat_request(
            request,
            route.upstream,
            max_tokens_default=route.model.max_tokens_default,
            stream=chunked,
            extra_fields=extra_fields,
            left_out=left_out,
        )
        if left_out:
            leave_out(ctx.trace, left_out)
        return body

    def chat_headers(self, ctx: CallContext) -> Mapping[str, str] | None:
        return {"anthropic-beta": ctx.anthropic_beta} if ctx.anthropic_beta else None

    def whole_answer(
        self, response: aiohttp.ClientResponse, chunked: bool
    ) -> CompletionDecoder | None:
        return None if chunked else from_provider.decode_completion

    async def embed(
        self, request: embeddings_pb2.EmbeddingRequest, route: Route, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        raise InvalidRequestError(
            f"model {echoed(route.model.name)!r} does not make embeddings", param="model"
        )
