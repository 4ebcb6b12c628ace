"""The one data plane behind every door.

Handlers take a proto request and a `CallContext` and return a proto, or an
async iterator of lists of chunks. A non-streaming chat answer is the stream
folded, so there is one path through the providers. Nothing here knows grpc
or HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING

from tandem.v1 import chat_pb2, embeddings_pb2, models_pb2, usage_pb2

from server.chunks import Batch, text_chunk
from server.config import ModelConfig
from server.context import CallContext, new_id
from server.core.estimate import estimate_prompt
from server.core.fold import fold_stream
from server.core.resilience import open_stream
from server.core.routing import Router
from server.core.validation import (
    validate_anthropic_beta,
    validate_chat_request,
    validate_embedding_request,
)
from server.errors import (
    GatewayError,
    NotFoundError,
    UnavailableError,
    UpstreamFailure,
    UpstreamTimeoutError,
    echoed,
)
from server.messages import estimate_tokens
from server.policy import Admission, Policy
from server.providers.base import DEFAULT_CAPABILITIES, DescribesModels, Route
from server.usage import UsageRecord, UsageRecorder
from server.usage.api import LedgerReader, usage_query, usage_response

if TYPE_CHECKING:
    from server.telemetry.tracing import Tracer

__all__ = ["DataPlane"]

logger = logging.getLogger("tandem.usage")


class DataPlane:
    def __init__(
        self,
        router: Router,
        policy: Policy,
        usage: UsageRecorder,
        ledger: LedgerReader | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.router = router
        self.policy = policy
        self.usage = usage
        self.ledger = ledger
        self.tracer = tracer  # None: tracing off, and nothing of it on the path
        self.started_at = int(time.time())

    def stream_chat(
        self, request: chat_pb2.ChatCompletionRequest, ctx: CallContext
    ) -> AsyncGenerator[Batch, None]:
        """The answer as lists of chunks (or their bare text: server/chunks.py), never
        empty: what each upstream read brought, to be written at once. The first item
        is a chunk; the last chunk carries `usage`.

        Nothing runs until the first batch is asked for, so a door can await
        it before committing to a status: errors up to then are plain errors.
        """
        stream = self._chat(request, ctx, streaming=True)
        if self.tracer is None:
            return stream
        return self.tracer.stream("chat", request, ctx, stream)

    async def create_chat(
        self, request: chat_pb2.ChatCompletionRequest, ctx: CallContext
    ) -> chat_pb2.ChatCompletion:
        answer = fold_stream(self._chat(request, ctx, streaming=False))
        if self.tracer is None:
            return await answer
        return await self.tracer.call("chat", request, ctx, answer)

    async def _chat(
        self, request: chat_pb2.ChatCompletionRequest, ctx: CallContext, *, streaming: bool
    ) -> AsyncGenerator[Batch, None]:
        validate_chat_request(request)
        if ctx.anthropic_beta is not None:
            validate_anthropic_beta(ctx.anthropic_beta)
        route = self.router.resolve(request.model, ctx.caller)
        ctx.trace.model = route.model.name
        prompt = ctx.trace.prompt_estimate = estimate_prompt(request)  # once: reserved, charged
        admission = await self.policy.admit(
            ctx, lambda: prompt + _choices(request) * _max_tokens(request)
        )
        completion_id = f"chatcmpl-{new_id()}"
        created = int(time.time())
        model = route.model.name  # the public name asked for, whoever serves it
        with _Accounting(self.usage, ctx, route, admission, streaming, prompt) as account:
            account.route, upstream, batch = await open_stream(
                self.router.chain(route), request, ctx, chunked=streaming, attempts=account
            )
            first = batch[0]
            if isinstance(first, str):  # the doors take id, time and model from a chunk
                first = text_chunk(first)
                batch = [first, *batch[1:]]
            account.first_chunk(first)
            sent = account.sent  # the texts that reached the caller, kept for an estimate
            try:
                while True:
                    for chunk in batch:
                        if isinstance(chunk, str):
                            if chunk:
                                sent.append(chunk)
                            continue
                        chunk.id = completion_id
                        chunk.created = created
                        chunk.model = model
                        if chunk.HasField("usage"):
                            account.usage_of(chunk.usage)
                            continue
                        # inline, for every chunk; the wrappers stay alive for the door
                        choices = chunk.choices
                        if len(choices) == 1:  # a upb `for` ends in a formatted IndexError
                            choice = choices[0]
                            delta = choice.delta
                            if delta.tool_calls or delta.HasField("refusal"):
                                account.keep_sent(choices)
                            else:
                                text = delta.content
                                if text:
                                    sent.append(text)
                                thought = delta.reasoning_content
                                if thought:
                                    sent.append(thought)
                        else:
                            account.keep_sent(choices)
                    account.chunks += len(batch)
                    if len(sent) >= _SENT_BATCH:
                        account.count_sent()
                    yield batch
                    batch = await anext(upstream)
            except StopAsyncIteration:
                pass
            finally:
                await upstream.aclose()
            if not account.usage_known:  # the upstream kept its counts: answer with the estimate
                yield [account.estimated_usage_chunk(completion_id, created, model)]

    async def embed(
        self, request: embeddings_pb2.EmbeddingRequest, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        if self.tracer is None:
            return await self._embed(request, ctx)
        return await self.tracer.call("embeddings", request, ctx, self._embed(request, ctx))

    async def _embed(
        self, request: embeddings_pb2.EmbeddingRequest, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        validate_embedding_request(request)
        route = self.router.resolve(request.model, ctx.caller)
        ctx.trace.model = route.model.name

        prompt = sum(estimate_tokens(text) for text in request.input)
        admission = await self.policy.admit(ctx, lambda: prompt)
        with _Accounting(self.usage, ctx, route, admission, False, prompt) as account:
            account.trying(route)
            try:
                response = await route.provider.embed(request, route, ctx)
            except UpstreamFailure as failure:  # timed out having sent the inputs: charged
                account.failed(failure)
                raise
            ctx.trace.upstream_model = response.model or route.upstream
            response.model = route.model.name
            if response.HasField("usage"):
                account.usage(response.usage.prompt_tokens, 0)
            else:  # the upstream kept its count: answer with the estimate charged
                response.usage.prompt_tokens = response.usage.total_tokens = prompt
                account.usage(prompt, 0, source="estimated")
            return response

    async def count_tokens(self, request: chat_pb2.ChatCompletionRequest, ctx: CallContext) -> int:
        """The gateway's estimate of a request's prompt, the one a chat reserves and may be
        charged: one request counted, no tokens reserved, nothing generated."""
        await self.admit_model(request.model, ctx)
        return estimate_prompt(request)

    async def admit_model(self, model: str, ctx: CallContext) -> ModelConfig:
        """`model` as configured once the caller may use it, one request counted: no
        tokens reserved, nothing generated, no upstream called (`count_tokens`, and
        Ollama's load: a chat with no messages)."""
        route = self.router.resolve(model, ctx.caller)
        ctx.trace.model = route.model.name
        await self.policy.admit_request(ctx)
        return route.model

    async def list_models(self, ctx: CallContext) -> models_pb2.ListModelsResponse:
        await self.policy.admit_request(ctx)
        response = models_pb2.ListModelsResponse()
        for route in self.router.visible(ctx.caller):
            response.data.append(self._describe(route))
        return response

    async def get_model(self, model_id: str, ctx: CallContext) -> models_pb2.Model:
        await self.policy.admit_request(ctx)
        for route in self.router.routes:
            if route.model.name == model_id:
                self.router.resolve(model_id, ctx.caller)  # refuses a model outside the tier
                return self._describe(route)
        raise NotFoundError(
            f"model {echoed(model_id)!r} not found", param="id", code="model_not_found"
        )

    async def capabilities(self, model_id: str, ctx: CallContext) -> tuple[str, ...]:
        """What a model the caller may use can do, in Ollama's words (`/api/show`): its
        configured `capabilities`, else what its provider's upstream says (an Ollama
        server's), else `completion`. Counts no request: `get_model` did."""
        route = self.router.resolve(model_id, ctx.caller)
        if route.model.capabilities is not None:
            return route.model.capabilities
        if isinstance(route.provider, DescribesModels):
            return await route.provider.capabilities(route.upstream, ctx)
        return DEFAULT_CAPABILITIES

    async def get_usage(
        self, request: usage_pb2.GetUsageRequest, ctx: CallContext
    ) -> usage_pb2.GetUsageResponse:
        query = usage_query(request, ctx.caller)
        if self.ledger is None:
            raise NotFoundError("usage is not recorded here (usage.store: none)", code="usage_off")
        await self.policy.admit_request(ctx)
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


# texts kept before they are counted: counting once per batch, over the joined
# text, is cheaper per chunk and closer to the whole answer's estimate
_SENT_BATCH = 256


def _choices(request: chat_pb2.ChatCompletionRequest) -> int:
    return request.n if request.HasField("n") else 1


def _max_tokens(request: chat_pb2.ChatCompletionRequest) -> int:
    if request.HasField("max_completion_tokens"):
        return request.max_completion_tokens
    return request.max_tokens


class _Accounting:
    """Settles the admission and records usage once a call ends, however it ends.

    What is charged is what is recorded: the upstream's counts when it sent
    them, else the gateway's estimate of the prompt and of what was sent. A
    caller that goes away (or whose deadline passes) while its request is
    upstream pays at least its prompt, even before the first chunk; so does
    a request whose upstream had it and then timed out (once, however often
    it was retried); any other upstream failure that produced nothing is free.
    """

    __slots__ = (
        "_admission",
        "_ctx",
        "_failed_completion",
        "_failed_prompt",
        "_failure_counted",
        "_in_flight",
        "_model",
        "_prompt",
        "_prompt_read",
        "_recorder",
        "_source",
        "_streaming",
        "_upstream_started",
        "cache_write_tokens",
        "cached_tokens",
        "chunks",
        "completion_tokens",
        "first_chunk_at",
        "prompt_tokens",
        "reasoning_tokens",
        "route",
        "sent",
        "sent_tokens",
        "usage_known",
    )

    def __init__(
        self,
        recorder: UsageRecorder,
        ctx: CallContext,
        route: Route,
        admission: Admission,
        streaming: bool,
        prompt: int,
    ) -> None:
        self._recorder = recorder
        self._ctx = ctx
        self.route = route  # the one that served, after fallbacks
        self._model = route.model.name  # the public name asked for
        self._admission = admission
        self._streaming = streaming
        self._prompt = prompt  # the prompt's estimate
        self._in_flight = False  # a request is with an upstream now
        self._prompt_read = False  # an upstream had the request, then timed out
        self._failed_prompt = self._failed_completion = 0  # counted by failed attempts
        self._failure_counted = False  # the attempt in flight was reported failed
        self._upstream_started: float | None = None  # the first attempt
        self._source = "upstream"
        self.usage_known = False
        self.first_chunk_at: float | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0  # of the prompt's, as the upstream said
        self.cache_write_tokens = 0  # of the prompt's, likewise
        self.reasoning_tokens = 0  # of the completion's
        self.sent: list[str] = []  # what reached the caller, not yet in sent_tokens
        self.sent_tokens = 0  # the estimate of what reached the caller
        self.chunks = 0

    def trying(self, route: Route) -> None:
        self.route = route
        self._in_flight = True
        self._failure_counted = False
        provider = route.provider
        trace = self._ctx.trace
        trace.provider = provider.name
        trace.provider_kind = provider.kind
        # the door's names, then the attempt's provider names what it leaves out
        trace.ignored_fields = trace.door_ignored
        if self._upstream_started is None:
            self._upstream_started = time.monotonic()

    def failed(self, failure: UpstreamFailure, usage: chat_pb2.Usage | None = None) -> None:
        # cut short by the caller's own deadline, the attempt was the caller's to pay
        self._in_flight = _deadline_passed(self._ctx)
        if isinstance(failure, UpstreamTimeoutError) and failure.sent:
            self._prompt_read = True
        if usage is not None:  # the upstream counted what it used: charged, whatever follows
            self._failed_prompt += usage.prompt_tokens
            self._failed_completion += usage.completion_tokens
        self._failure_counted = True
        self._ctx.trace.attempt_failed(self.route.provider.name)

    def first_chunk(self, chunk: chat_pb2.ChatCompletionChunk) -> None:
        """The chunk that opened the answer, before the core renames its model."""
        now = self.first_chunk_at = time.monotonic()
        trace = self._ctx.trace
        trace.upstream_model = chunk.model or self.route.upstream
        if self._streaming:
            trace.first_chunk_at = now
            if self._upstream_started is not None:
                trace.upstream_s = now - self._upstream_started

    def usage_of(self, usage: chat_pb2.Usage) -> None:
        """The upstream's counts, with the cached, cache write and reasoning tokens in them."""
        self.usage(usage.prompt_tokens, usage.completion_tokens)
        self.cached_tokens = usage.prompt_tokens_details.cached_tokens
        self.cache_write_tokens = usage.prompt_tokens_details.cache_write_tokens
        self.reasoning_tokens = usage.completion_tokens_details.reasoning_tokens

    def usage(self, prompt_tokens: int, completion_tokens: int, source: str = "upstream") -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self._source = source
        self.usage_known = True

    def keep_sent(self, choices: Iterable[chat_pb2.ChunkChoice]) -> None:
        """Keep what a chunk's choices sent: text, reasoning, refusals, tool names and
        arguments (the commonest, one choice's text or reasoning, is kept inline)."""
        sent = self.sent
        for choice in choices:
            delta = choice.delta
            if delta.content:
                sent.append(delta.content)
            if delta.reasoning_content:
                sent.append(delta.reasoning_content)
            if delta.refusal:
                sent.append(delta.refusal)
            for call in delta.tool_calls:
                sent.append(call.function.name)
                sent.append(call.function.arguments)

    def count_sent(self) -> None:
        """Fold the texts kept so far into the estimate (a long stream keeps a bounded list)."""
        if self.sent:
            self.sent_tokens += estimate_tokens("".join(self.sent))
            self.sent.clear()

    def _estimate(self) -> None:
        self.count_sent()
        self.usage(self._prompt, self.sent_tokens, source="estimated")

    def estimated_usage_chunk(
        self, completion_id: str, created: int, model: str
    ) -> chat_pb2.ChatCompletionChunk:
        """The last chunk of an answer whose upstream sent no usage: the estimate charged."""
        self._estimate()
        chunk = chat_pb2.ChatCompletionChunk(id=completion_id, created=created, model=model)
        chunk.usage.prompt_tokens = self.prompt_tokens
        chunk.usage.completion_tokens = self.completion_tokens
        chunk.usage.total_tokens = self.prompt_tokens + self.completion_tokens
        return chunk

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
        gone = exc is not None and _caller_gone(exc, ctx)
        if not self.usage_known:
            if exc is None or self.chunks or (gone and self._in_flight):
                self._estimate()
            elif self._prompt_read:  # it timed out having had the prompt: that, once
                self.usage(self._prompt, 0, source="estimated")
            elif self._failed_prompt or self._failed_completion:
                self._source = "upstream"  # only what failed attempts counted
            else:  # failed having produced nothing (or never sent): nothing to charge
                self._source = "estimated"
        self.prompt_tokens += self._failed_prompt
        self.completion_tokens += self._failed_completion
        self._admission.settle(self.prompt_tokens + self.completion_tokens)
        ttft = self.first_chunk_at if self._streaming else None
        caller = ctx.caller
        trace = ctx.trace
        trace.prompt_tokens = self.prompt_tokens
        trace.completion_tokens = self.completion_tokens
        if self._upstream_started is not None and trace.upstream_s is None:
            trace.upstream_s = now - self._upstream_started
        if isinstance(exc, UpstreamFailure) and self._in_flight and not self._failure_counted:
            trace.attempt_failed(self.route.provider.name)  # after its first chunk, or an embed
        self._recorder.record(
            UsageRecord(
                id=new_id(),
                request_id=ctx.request_id,
                user=caller.user,
                model=self._model,
                provider=self.route.provider.name,
                protocol=ctx.protocol,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                status="cancelled" if gone else _status(exc),
                latency_ms=(now - ctx.started) * 1000,
                ttft_ms=None if ttft is None else (ttft - ctx.started) * 1000,
                created_at=time.time_ns() // 1000 - round((now - ctx.started) * 1e6),  # arrival
                usage_source=self._source,
                caller_kind=caller.kind,
                cached_tokens=self.cached_tokens,
                reasoning_tokens=self.reasoning_tokens,
                cache_write_tokens=self.cache_write_tokens,
            )
        )


# an upstream timer capped by the caller's deadline may fire a little before it
_DEADLINE_SLACK_S = 0.01


def _deadline_passed(ctx: CallContext) -> bool:
    remaining = ctx.time_remaining()
    return remaining is not None and remaining < _DEADLINE_SLACK_S


def _caller_gone(exc: BaseException, ctx: CallContext) -> bool:
    """The caller went away, or its own deadline passed: not the upstream's failure."""
    return isinstance(exc, asyncio.CancelledError | GeneratorExit) or _deadline_passed(ctx)


def _status(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, GatewayError):
        return f"error:{exc.type}"
    return "error:internal_error"
