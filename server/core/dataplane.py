"""The one data plane behind every door.

Handlers take a proto request and a `CallContext` and return a proto, or an
async iterator of chunks. A non-streaming chat answer is the stream folded,
so there is one path through the providers. Nothing here knows grpc or HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from types import TracebackType

from tandem.v1 import chat_pb2, embeddings_pb2, models_pb2, usage_pb2

from server.core.context import CallContext, new_id
from server.core.errors import GatewayError, NotFoundError, UnavailableError
from server.core.fold import fold_stream
from server.core.messages import count_words, prompt_words
from server.core.resilience import open_stream
from server.core.routing import Router
from server.core.validation import validate_chat_request, validate_embedding_request
from server.policy import Admission, Policy
from server.providers.base import Route
from server.usage import UsageRecord, UsageRecorder
from server.usage.api import LedgerReader, usage_query, usage_response

__all__ = ["DataPlane"]

logger = logging.getLogger("tandem.usage")


class DataPlane:
    def __init__(
        self,
        router: Router,
        policy: Policy,
        usage: UsageRecorder,
        ledger: LedgerReader | None = None,
    ) -> None:
        self.router = router
        self.policy = policy
        self.usage = usage
        self.ledger = ledger
        self.started_at = int(time.time())

    def stream_chat(
        self, request: chat_pb2.ChatCompletionRequest, ctx: CallContext
    ) -> AsyncIterator[chat_pb2.ChatCompletionChunk]:
        """The answer as chunks; the last carries `usage`.

        Nothing runs until the first chunk is asked for, so a door can await
        it before committing to a status: errors up to then are plain errors.
        """
        return self._chat(request, ctx, streaming=True)

    async def create_chat(
        self, request: chat_pb2.ChatCompletionRequest, ctx: CallContext
    ) -> chat_pb2.ChatCompletion:
        return await fold_stream(self._chat(request, ctx, streaming=False))

    async def _chat(
        self, request: chat_pb2.ChatCompletionRequest, ctx: CallContext, *, streaming: bool
    ) -> AsyncIterator[chat_pb2.ChatCompletionChunk]:
        validate_chat_request(request)
        route = self.router.resolve(request.model, ctx.caller)
        admission = await self.policy.admit(
            ctx, route, lambda: prompt_words(request.messages) + _max_tokens(request)
        )

        completion_id = f"chatcmpl-{new_id()}"
        created = int(time.time())
        model = route.model.name  # the public name asked for, whoever serves it
        with _Accounting(
            self.usage, ctx, route, admission, streaming, lambda: prompt_words(request.messages)
        ) as account:
            account.route, upstream, chunk = await open_stream(
                self.router.chain(route), request, ctx, chunked=streaming, attempting=account.trying
            )
            account.first_chunk_at = time.monotonic()
            try:
                while True:
                    chunk.id = completion_id
                    chunk.created = created
                    chunk.model = model
                    if chunk.HasField("usage"):
                        account.usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    account.chunks += 1
                    yield chunk
                    chunk = await anext(upstream)
            except StopAsyncIteration:
                pass
            finally:
                await upstream.aclose()  # type: ignore[attr-defined]

    async def embed(
        self, request: embeddings_pb2.EmbeddingRequest, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        validate_embedding_request(request)
        route = self.router.resolve(request.model, ctx.caller)

        def prompt_tokens() -> int:
            return sum(count_words(text) for text in request.input)

        admission = await self.policy.admit(ctx, route, prompt_tokens)
        with _Accounting(self.usage, ctx, route, admission, False, prompt_tokens) as account:
            response = await route.provider.embed(request, route, ctx)
            response.model = route.model.name
            account.usage(response.usage.prompt_tokens, 0)
            return response

    def list_models(self, ctx: CallContext) -> models_pb2.ListModelsResponse:
        response = models_pb2.ListModelsResponse()
        for route in self.router.visible(ctx.caller):
            response.data.append(self._describe(route))
        return response

    def get_model(self, model_id: str, ctx: CallContext) -> models_pb2.Model:
        for route in self.router.routes:
            if route.model.name == model_id:
                self.router.resolve(model_id, ctx.caller)  # refuses a model outside the tier
                return self._describe(route)
        raise NotFoundError(f"model {model_id!r} not found", param="id", code="model_not_found")

    async def get_usage(
        self, request: usage_pb2.GetUsageRequest, ctx: CallContext
    ) -> usage_pb2.GetUsageResponse:
        query = usage_query(request, ctx.caller)
        if self.ledger is None:
            raise NotFoundError("usage is not recorded here (usage.store: none)", code="usage_off")
        try:
            page = await self.ledger.query_usage(query)
        except Exception as exc:  # the store's own errors (asyncpg, sqlite3, OSError): it is down
            logger.warning("usage read failed: store unavailable (%s)", type(exc).__name__)
            raise UnavailableError(
                "the usage store is unavailable; retry shortly", code="usage_store_unavailable"
            ) from None
        return usage_response(page)

    def _describe(self, route: Route) -> models_pb2.Model:
        return models_pb2.Model(
            id=route.model.name, owned_by=route.provider.name, created=self.started_at
        )


def _max_tokens(request: chat_pb2.ChatCompletionRequest) -> int:
    if request.HasField("max_completion_tokens"):
        return request.max_completion_tokens
    return request.max_tokens


class _Accounting:
    """Settles the admission and records usage once a call ends, however it ends."""

    __slots__ = (
        "_admission",
        "_ctx",
        "_estimate_prompt",
        "_model",
        "_recorder",
        "_streaming",
        "_usage_known",
        "chunks",
        "completion_tokens",
        "first_chunk_at",
        "prompt_tokens",
        "route",
    )

    def __init__(
        self,
        recorder: UsageRecorder,
        ctx: CallContext,
        route: Route,
        admission: Admission,
        streaming: bool,
        estimate_prompt: Callable[[], int],
    ) -> None:
        self._recorder = recorder
        self._ctx = ctx
        self.route = route  # the one that served, after fallbacks
        self._model = route.model.name  # the public name asked for
        self._admission = admission
        self._streaming = streaming
        self._estimate_prompt = estimate_prompt
        self._usage_known = False
        self.first_chunk_at: float | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.chunks = 0

    def trying(self, route: Route) -> None:
        self.route = route

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self._usage_known = True

    def __enter__(self) -> _Accounting:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ctx = self._ctx
        now = time.monotonic()
        if not self._usage_known and (exc is None or self.chunks):
            # no usage from upstream (cut short, or never sent): count what was sent,
            # so a cancelled stream is charged, not refunded
            self.prompt_tokens = self._estimate_prompt()
            self.completion_tokens = self.chunks
        self._admission.settle(self.prompt_tokens + self.completion_tokens)
        ttft = self.first_chunk_at if self._streaming else None
        self._recorder.record(
            UsageRecord(
                id=new_id(),
                request_id=ctx.request_id,
                user=ctx.caller.user,
                model=self._model,
                provider=self.route.provider.name,
                protocol=ctx.protocol,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                status=_status(exc),
                latency_ms=(now - ctx.started) * 1000,
                ttft_ms=None if ttft is None else (ttft - ctx.started) * 1000,
                created_at=time.time_ns() // 1000 - round((now - ctx.started) * 1e6),  # arrival
            )
        )


def _status(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    if isinstance(exc, GatewayError):
        return f"error:{exc.type}"
    return "error:internal_error"
