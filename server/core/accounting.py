"""What a call costs: the one place its admission is charged and its usage recorded.

`Accounting` wraps a call from admission to its end, however it ends (answered,
failed, cancelled, past its deadline): it settles the admission with what the
call is charged and records the same counts in the usage ledger, so what is
charged is what is recorded. It hears of each upstream attempt from the retry
loop (`core/resilience.py`, `Attempts`) and leaves what it learns of the call
on its trace, and prices the record (the cost the ledger keeps). A call with a
budget settles it here too: its record carries the hold's id and arrival, and goes
to the batcher with its settlement (the ledger write is the settlement:
server/usage/budget.py), its hold then no longer renewed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from types import TracebackType

from tandem.v1 import chat_pb2

from server.context import CallContext, new_id
from server.errors import GatewayError, UpstreamFailure, UpstreamTimeoutError
from server.messages import estimate_tokens
from server.policy import Admission
from server.providers.base import Route
from server.usage import UsageRecord, UsageRecorder
from server.usage.budget import Settlement
from server.usage.prices import Prices

__all__ = ["SENT_BATCH", "Accounting"]

# texts kept before they are counted: counting once per batch, over the joined
# text, is cheaper per chunk and closer to the whole answer's estimate
SENT_BATCH = 256


class Accounting:
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
        "_prices",
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
        prices: Prices,
    ) -> None:
        self._recorder = recorder
        self._prices = prices
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
        self._ctx.trace.attempting(route.provider.name, route.provider.kind)
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
        upstream_model = chunk.model or self.route.upstream
        if not self._streaming:
            self._ctx.trace.answered(upstream_model)
        else:
            started = self._upstream_started
            upstream_s = None if started is None else now - started
            self._ctx.trace.answered(upstream_model, now, upstream_s)

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

    def __enter__(self) -> Accounting:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        hold = self._admission.hold
        if hold is None:
            self._end(exc)
            return
        try:
            self._end(exc)
        except BaseException:  # no record made: nothing would settle its hold but its lease
            hold.keeper.cancel(hold.id, hold.periods)
            raise

    def _end(self, exc: BaseException | None) -> None:
        """Settle the admission and record the call (its record settles its hold)."""
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
        started = self._upstream_started
        trace.counted(
            self.prompt_tokens, self.completion_tokens, None if started is None else now - started
        )
        hold = self._admission.hold
        if hold is None:
            record_id = new_id()
            arrival = time.time_ns() // 1000 - round((now - ctx.started) * 1e6)
        else:  # admitted under a budget: the hold's id, the period's moment
            record_id, arrival = hold.id, hold.at_us
        # priced as the route that served (after fallbacks), at the price of its arrival
        cost, cost_source = self._prices.cost(
            self.route.model.name,
            arrival,
            prompt=self.prompt_tokens,
            cached=self.cached_tokens,
            cache_write=self.cache_write_tokens,
            completion=self.completion_tokens,
            reasoning=self.reasoning_tokens,
        )
        if not (self.prompt_tokens or self.completion_tokens):
            cost = 0  # a call charged nothing is free, a price per call (Perplexity's) too
        trace.priced(cost)
        if isinstance(exc, UpstreamFailure) and self._in_flight and not self._failure_counted:
            trace.attempt_failed(self.route.provider.name)  # after its first chunk, or an embed
        record = UsageRecord(
            id=record_id,
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
            created_at=arrival,
            usage_source=self._source,
            caller_kind=caller.kind,
            cached_tokens=self.cached_tokens,
            reasoning_tokens=self.reasoning_tokens,
            cache_write_tokens=self.cache_write_tokens,
            cost_nanos=cost,
            cost_source=cost_source,
            key_id=caller.key_id,
            tier=caller.tier,
        )
        if hold is None:
            self._recorder.record(record)
            return
        self._recorder.record(record, Settlement(record_id, cost, hold.periods))
        hold.keeper.release(record_id)


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
