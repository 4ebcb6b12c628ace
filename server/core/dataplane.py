"""The one data plane behind every door.

Handlers take a proto request and a `CallContext` and return a proto, or an
async iterator of lists of chunks. A non-streaming chat answer is the stream
folded, so there is one path through the providers. Nothing here knows grpc
or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from tandem.v1 import chat_pb2, embeddings_pb2, models_pb2, usage_pb2

from server.chunks import Batch, text_chunk
from server.config import ModelConfig
from server.context import CallContext, new_id
from server.core.accounting import SENT_BATCH, Accounting
from server.core.estimate import estimate_prompt, estimate_relayed_prompt
from server.core.fold import fold_stream
from server.core.relay import Event, Relay, Scrub, check_relayed, max_output_tokens
from server.core.resilience import open_first, open_stream
from server.core.routing import Router
from server.core.validation import (
    validate_anthropic_beta,
    validate_chat_request,
    validate_embedding_request,
)
from server.errors import (
    GatewayError,
    InternalError,
    NotFoundError,
    UnavailableError,
    UpstreamError,
    UpstreamFailure,
    echoed,
)
from server.messages import estimate_tokens
from server.policy import Policy
from server.providers.base import DEFAULT_CAPABILITIES, DescribesModels, RelaysResponses, Route
from server.translate.responses.seal import Sealer
from server.usage import UsageRecorder
from server.usage.api import LedgerReader, usage_query, usage_response
from server.usage.money import usd_text
from server.usage.prices import ListedPrice, Prices

if TYPE_CHECKING:
    from server.telemetry.tracing import Tracer

__all__ = ["DataPlane"]

logger = logging.getLogger("tandem.usage")

# how long a call with a budget waits, before its answer ends, for its record to be
# written (its hold settled), so that its caller's next request sees its spend
SETTLED_WAIT_S = 2.0


@dataclass(eq=False)
class DataPlane:
    router: Router
    policy: Policy
    usage: UsageRecorder
    ledger: LedgerReader | None = None
    tracer: Tracer | None = None  # None: tracing off, and nothing of it on the path
    # seals the Responses door's reasoning items (made at start-up: seal.shared_sealer)
    sealer: Sealer = field(default_factory=Sealer.ephemeral)
    # each model's price: the listing's, and what a call costs (made at start-up)
    prices: Prices = field(kw_only=True)
    started_at: int = field(default_factory=lambda: int(time.time()), init=False)

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
        route, prompt = self._resolve_chat(request, ctx)
        model = route.model.name  # the public name asked for, whoever serves it
        output = _choices(request) * _max_tokens(request)
        completion_id = f"chatcmpl-{new_id()}"
        created = int(time.time())
        # admitted, a call is in Accounting at once: its end, however it ends, is a record
        admission = await self.policy.admit(
            ctx, lambda: prompt + output, self._estimate_cost(model, prompt, output)
        )
        with Accounting(
            self.usage, ctx, route, admission, streaming, prompt, self.prices
        ) as account:
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
                    if len(sent) >= SENT_BATCH:
                        account.count_sent()
                    yield batch
                    batch = await anext(upstream)
            except StopAsyncIteration:
                pass
            finally:
                await upstream.aclose()
            if not account.usage_known:  # the upstream kept its counts: answer with the estimate
                yield [account.estimated_usage_chunk(completion_id, created, model)]
        if admission.hold is not None and admission.hold.settle_before_end:
            await self._settled()

    def _resolve_chat(
        self, request: chat_pb2.ChatCompletionRequest, ctx: CallContext
    ) -> tuple[Route, int]:
        """A valid request's route to a model the caller may use, and its prompt's
        estimate: computed once, it is reserved, and charged if the upstream counts
        nothing. A plain call: no coroutine on the hot path."""
        validate_chat_request(request)
        if ctx.anthropic_beta is not None:
            validate_anthropic_beta(ctx.anthropic_beta)
        route = self.router.resolve(request.model, ctx.caller)
        prompt = estimate_prompt(request)
        ctx.trace.resolved(route.model.name, prompt)
        return route, prompt

    def relayed_route(self, body: dict[str, Any], ctx: CallContext) -> Route | None:
        """The route of a Responses request (`/v1/responses`) whose model's provider
        answers it itself (`responses: native`: core/relay.py), else None (the door
        translates it). Refuses what the gateway cannot relay."""
        model = body.get("model", "")
        if not isinstance(model, str):
            return None  # the door's parser names it
        route = self.router.resolve(model, ctx.caller)
        if not _relays(route):
            return None
        check_relayed(body)
        return route

    def stream_relayed(
        self, route: Route, body: dict[str, Any], ctx: CallContext
    ) -> AsyncGenerator[list[Event], None]:
        """`relayed_route`'s call, streamed: the upstream's events, a list for each read,
        under the same policy, ledger and retries as a chat. As `stream_chat`, nothing
        runs until the first list is asked for."""
        stream = self._relay(route, body, ctx, streaming=True)
        if self.tracer is None:
            return stream
        return self.tracer.stream("chat", _traced(route, body), ctx, stream)

    async def create_relayed(self, route: Route, body: dict[str, Any], ctx: CallContext) -> bytes:
        """`relayed_route`'s call, whole: the upstream's answer, its JSON."""
        answer = _relayed_whole(self._relay(route, body, ctx, streaming=False))
        if self.tracer is None:
            return await answer
        return await self.tracer.call("chat", _traced(route, body), ctx, answer)

    async def _relay(
        self, route: Route, body: dict[str, Any], ctx: CallContext, *, streaming: bool
    ) -> AsyncGenerator[list[Event], None]:
        prompt = estimate_relayed_prompt(body)
        ctx.trace.resolved(route.model.name, prompt)
        output = max_output_tokens(body)
        relay = Relay(route.model.name, streaming=streaming)
        # the request as written means nothing to a translated fallback (hosted tools,
        # sealed reasoning, the upstream's stored state): only relaying ones are tried
        chain = [r for r in self.router.chain(route) if _relays(r)]

        def start(attempt: Route) -> AsyncGenerator[list[Event], None]:
            provider = cast(RelaysResponses, attempt.provider)  # `chain` holds only those
            answer = provider.respond(body, attempt, ctx, streaming=streaming)
            return _relayed(relay, answer, provider.scrub)

        # admitted, a call is in Accounting at once: its end, however it ends, is a record
        admission = await self.policy.admit(
            ctx, lambda: prompt + output, self._estimate_cost(route.model.name, prompt, output)
        )
        with Accounting(
            self.usage, ctx, route, admission, streaming, prompt, self.prices
        ) as account:
            account.route, upstream, batch = await open_first(chain, start, ctx, attempts=account)
            account.first_chunk(chat_pb2.ChatCompletionChunk(model=relay.upstream_model))
            try:
                while True:
                    if relay.sent:
                        account.sent += relay.sent
                        relay.sent.clear()
                        if len(account.sent) >= SENT_BATCH:
                            account.count_sent()
                    account.chunks += len(batch)
                    if relay.ended:  # charged now: a caller gone at this yield still pays it
                        _charge(account, relay)
                    yield batch
                    if relay.ended:
                        break
                    next_batch = await anext(upstream, None)
                    if next_batch is None:
                        raise UpstreamError("upstream provider's stream ended before its response")
                    batch = next_batch
            except Exception as exc:  # after the first event: the stream ends in response.failed
                if not relay.ended:
                    error = (
                        exc if isinstance(exc, GatewayError) else InternalError("internal error")
                    )
                    yield [relay.failed(error)]
                raise
            finally:
                await upstream.aclose()
            if relay.failed_upstream:  # relayed as it came; recorded as the upstream's failure
                raise UpstreamError("upstream provider's response failed")
        if admission.hold is not None and admission.hold.settle_before_end:
            await self._settled()

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
        ctx.trace.resolved(route.model.name)

        prompt = sum(estimate_tokens(text) for text in request.input)
        admission = await self.policy.admit(
            ctx, lambda: prompt, self._estimate_cost(route.model.name, prompt, 0)
        )
        with Accounting(self.usage, ctx, route, admission, False, prompt, self.prices) as account:
            account.trying(route)
            try:
                response = await route.provider.embed(request, route, ctx)
            except UpstreamFailure as failure:  # timed out having sent the inputs: charged
                account.failed(failure)
                raise
            ctx.trace.answered(response.model or route.upstream)
            response.model = route.model.name
            if response.HasField("usage"):
                account.usage(response.usage.prompt_tokens, 0)
            else:  # the upstream kept its count: answer with the estimate charged
                response.usage.prompt_tokens = response.usage.total_tokens = prompt
                account.usage(prompt, 0, source="estimated")
        if admission.hold is not None and admission.hold.settle_before_end:
            await self._settled()
        return response

    def _estimate_cost(self, model: str, prompt: int, output: int) -> Callable[[int], int | None]:
        """A call's estimated cost at its arrival `at_us`, for the policy to reserve against
        its budgets (asked only when one applies): the prompt's estimate at the input
        price, `output` (n x max_tokens) at the output price; None: unpriced."""
        prices = self.prices
        return lambda at_us: prices.reserve(model, at_us, prompt, output)

    async def _settled(self) -> None:
        """A call near its budget's limit waits, before its answer ends, until its record
        is written (its hold settled), so that its caller's next request sees its spend:
        at most SETTLED_WAIT_S (the batch still settles it later). A cancellation goes
        through. A call without a budget, or far from its limit, never waits."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLED_WAIT_S):
                await self.usage.flushed()

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
        ctx.trace.resolved(route.model.name)
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
        listed = self.prices.listed(route.model.name)
        return models_pb2.Model(
            id=route.model.name,
            owned_by=route.provider.name,
            created=self.started_at,
            price=None if listed is None else _price(listed),
        )


def _price(listed: ListedPrice) -> models_pb2.Price:
    return models_pb2.Price(
        input_per_mtok=usd_text(listed.input_per_mtok),
        output_per_mtok=usd_text(listed.output_per_mtok),
        cached_input_per_mtok=usd_text(listed.cached_input_per_mtok),
        cache_write_per_mtok=usd_text(listed.cache_write_per_mtok),
    )


def _choices(request: chat_pb2.ChatCompletionRequest) -> int:
    return request.n if request.HasField("n") else 1


def _max_tokens(request: chat_pb2.ChatCompletionRequest) -> int:
    if request.HasField("max_completion_tokens"):
        return request.max_completion_tokens
    return request.max_tokens


def _relays(route: Route) -> bool:
    # on every translated call too: `getattr` is ~0.03 us, a runtime protocol check ~6.6 us
    return getattr(route.provider, "responses_native", False) is True


async def _relayed(
    relay: Relay, source: AsyncGenerator[list[bytes], None], scrub: Scrub
) -> AsyncGenerator[list[Event], None]:
    """An attempt's answer, read by `relay` (its errors cleaned by `scrub`): up to the
    event that ends it. The events before one that fails still go out, before the failure."""
    relay.start(scrub)
    async with contextlib.aclosing(source):
        async for payloads in source:
            out: list[Event] = []
            try:
                for raw in payloads:
                    out.append(relay.event(raw) if relay.streaming else relay.whole(raw))
                    if relay.ended:
                        break
            except GatewayError:
                if out:
                    yield out
                raise
            yield out
            if relay.ended:
                return


def _charge(account: Accounting, relay: Relay) -> None:
    """What the upstream said its answer used, if it said."""
    if relay.usage_known:
        account.usage(relay.input_tokens, relay.output_tokens)
        account.cached_tokens = relay.cached_tokens
        account.reasoning_tokens = relay.reasoning_tokens


async def _relayed_whole(stream: AsyncGenerator[list[Event], None]) -> bytes:
    answer = b""
    async with contextlib.aclosing(stream):
        async for batch in stream:
            answer = batch[-1][1]
    return answer


def _traced(route: Route, body: dict[str, Any]) -> chat_pb2.ChatCompletionRequest:
    """What a relayed call's span says of its request: its model and sampling."""
    request = chat_pb2.ChatCompletionRequest(model=route.model.name)
    for field_name in ("temperature", "top_p"):
        value = body.get(field_name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            setattr(request, field_name, value)
    return request
