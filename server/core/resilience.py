"""Retries and fallbacks: until the first chunk, a failed upstream is asked again,
then the next model.

Once a chunk has reached the caller nothing is retried; a later failure ends
the stream. A retryable failure (connect error, timeout before the first
byte, 408, 429, 5xx) is retried up to the provider's `max_retries` with
jittered exponential backoff, honouring the upstream's `retry-after`; any
upstream failure then moves on to the model's `fallbacks`, in order. A
request the upstream calls invalid (400) is the caller's error: no retry.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from tandem.v1 import chat_pb2

from server.chunks import Batch
from server.context import CallContext
from server.errors import UpstreamError, UpstreamFailure, UpstreamTimeoutError
from server.providers.base import Route

__all__ = ["Attempts", "backoff_s", "open_first", "open_stream"]

T = TypeVar("T")

BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 2.0
RETRY_AFTER_MAX_S = 10.0


class Attempts(Protocol):
    """Hears of each attempt: what the ledger needs to know of work sent upstream."""

    def trying(self, route: Route) -> None:
        """The request is on its way to `route` (the record names the last one tried)."""

    def failed(self, failure: UpstreamFailure, usage: chat_pb2.Usage | None = None) -> None:
        """That attempt failed having produced nothing: it is not the caller's to pay,
        unless it timed out once the upstream had its prompt, or the upstream counted
        what it used (`usage`: an answer with no choice)."""


def backoff_s(retry: int, retry_after_s: float | None) -> float:
    """Full-jitter exponential backoff, at least the upstream's (bounded) retry-after."""
    delay = random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**retry))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, RETRY_AFTER_MAX_S))
    return delay


async def open_stream(
    chain: Sequence[Route],
    request: chat_pb2.ChatCompletionRequest,
    ctx: CallContext,
    *,
    chunked: bool,
    attempts: Attempts,
) -> tuple[Route, AsyncGenerator[Batch, None], Batch]:
    """The first route of `chain` to produce chunks: (route, its stream, the first batch)."""
    return await open_first(
        chain,
        lambda route: route.provider.stream(request, route, ctx, chunked=chunked),
        ctx,
        attempts=attempts,
        first=_up_to_a_choice,
    )


async def open_first(
    chain: Sequence[Route],
    start: Callable[[Route], AsyncGenerator[T, None]],
    ctx: CallContext,
    *,
    attempts: Attempts,
    first: Callable[[AsyncGenerator[T, None]], Awaitable[T]] = anext,
) -> tuple[Route, AsyncGenerator[T, None], T]:
    """The first route of `chain` whose stream (`start(route)`) yields a `first` item:
    (route, its stream, that item), under the policy above. A chat's first is a batch
    holding a choice; a relayed Responses answer's (core/relay.py) its first read."""
    failure: UpstreamFailure | None = None
    tried = 0
    for route in chain:
        for retry in range(route.provider.max_retries + 1):
            if retry:
                assert failure is not None
                delay = backoff_s(retry - 1, failure.retry_after_s)
                remaining = ctx.time_remaining()
                if remaining is not None and delay >= remaining:
                    break
                await asyncio.sleep(delay)
            tried += 1
            attempts.trying(route)
            stream = start(route)
            usage = None
            try:
                return route, stream, await first(stream)
            except _NoChoice as empty:
                failure = UpstreamError("upstream provider sent an answer with no choice")
                usage = empty.usage
            except StopAsyncIteration:
                failure = UpstreamError("upstream provider sent an empty answer")
            except UpstreamFailure as exc:
                failure = exc
            attempts.failed(failure, usage)
            await stream.aclose()
            if not failure.retryable:
                break
    assert failure is not None
    after = f"after {tried} attempt{'s' if tried > 1 else ''}"
    if isinstance(failure, UpstreamTimeoutError):
        raise UpstreamTimeoutError(f"{failure.message} ({after})")
    raise UpstreamError(f"{failure.message} ({after})")


async def _up_to_a_choice(stream: AsyncIterator[Batch]) -> Batch:
    """The stream's batches up to the first that holds a choice, as one batch. An answer
    with none (`choices: []`, whole or streamed) ends in StopAsyncIteration: a failure
    here, before any door committed to a status, so it is a 502 on every door. What
    came before the choice (a usage, a prompt filter's verdict) goes out with it."""
    batch = await anext(stream)
    if _has_choice(batch):
        return batch
    held = list(batch)
    while not _has_choice(batch):
        try:
            batch = await anext(stream)
        except StopAsyncIteration:
            raise _NoChoice(held) from None
        held.extend(batch)
    return held


class _NoChoice(Exception):
    """The answer ended without a choice; `usage`: what the upstream said it used."""

    def __init__(self, held: Batch) -> None:
        super().__init__()
        self.usage: chat_pb2.Usage | None = None
        for item in held:
            if not isinstance(item, str) and item.HasField("usage"):
                self.usage = item.usage


def _has_choice(batch: Batch) -> bool:
    return any(isinstance(item, str) or item.choices for item in batch)
