"""The base class of the HTTP provider kinds, kept apart from `base.py` so that
aiohttp is imported only when an HTTP kind is configured.

A chat call has one shape for every HTTP kind: POST the request its dialect's
`to_provider` encodes, then read the answer whole (one chunk) or as a stream
of framed events, each decoded by its `from_provider`. A kind says where it
posts and how it encodes and reads (the hooks below); `stream` is written
once, here.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, TypeVar

import aiohttp

from server.chunks import Batch
from server.config import ProviderConfig
from server.context import CallContext
from server.providers.base import ChatRequest, Route
from server.providers.http_client import HttpClient
from server.providers.reads import decode, decoded, sse_batches
from server.translate.protocols import JSON, CompletionDecoder, StreamDecoderFactory

T = TypeVar("T")

__all__ = ["HttpProvider", "bearer"]


def bearer(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class HttpProvider(abc.ABC):
    """What the HTTP kinds share: a name, a retry budget, one pooled client and the
    chat call (`stream`)."""

    chat_path: str  # where chat requests are posted, below the provider's url
    stream_decoder: StreamDecoderFactory  # the dialect's `from_provider.StreamDecoder`

    def __init__(self, config: ProviderConfig, *, headers: Mapping[str, str]) -> None:
        self.name = config.name
        self.kind: str = config.kind
        self.max_retries = config.max_retries
        self.client = HttpClient(config, headers=headers)

    @abc.abstractmethod
    def chat_body(
        self, request: ChatRequest, route: Route, ctx: CallContext, chunked: bool
    ) -> JSON:
        """The provider's request, naming in `ctx.trace` what it leaves out."""

    def chat_headers(self, ctx: CallContext) -> Mapping[str, str] | None:
        """Headers of this call beside the provider's own."""
        return None

    def whole_answer(
        self, response: aiohttp.ClientResponse, chunked: bool
    ) -> CompletionDecoder | None:
        """What reads this answer whole, as one chunk; None: it is read as a stream."""
        return None

    def frames(self, response: aiohttp.ClientResponse) -> AsyncGenerator[list[bytes], None]:
        """A streamed answer's payloads, a list for each read."""
        return sse_batches(response)

    async def stream(
        self, request: ChatRequest, route: Route, ctx: CallContext, *, chunked: bool
    ) -> AsyncGenerator[Batch, None]:
        body = self.chat_body(request, route, ctx, chunked)
        async with self.client.post(
            self.chat_path, body, ctx, streaming=chunked, extra_headers=self.chat_headers(ctx)
        ) as response:
            whole = self.whole_answer(response, chunked)
            if whole is not None:
                yield [decode(await response.read(), whole)]
                return
            async for batch in decoded(self.frames(response), self.stream_decoder().feed):
                yield batch

    async def answer(
        self, path: str, body: dict[str, Any], ctx: CallContext, convert: Callable[[Any], T]
    ) -> T:
        """POST `body` unstreamed; its whole answer, `convert`ed (a malformed one is an
        upstream error: `reads.decode`)."""
        async with self.client.post(path, body, ctx, streaming=False) as response:
            raw = await response.read()
        return decode(raw, convert)

    async def aclose(self) -> None:
        await self.client.aclose()
