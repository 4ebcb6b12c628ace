"""The in-memory limiter's GCRA buckets, on a clock the test moves."""

from __future__ import annotations

import pytest

from server.policy.limiter import MemoryLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_requests_bucket_allows_capacity_then_refills_continuously(clock: Clock) -> None:
    limiter = MemoryLimiter(clock=clock)
    decisions = [await limiter.acquire("k", 3, None, 0) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.requests.remaining for d in decisions if d.requests] == [2, 1, 0, 0]
    assert decisions[3].retry_after_s == pytest.approx(20.0)  # one request every 20 s
    assert decisions[2].requests is not None
    assert decisions[2].requests.reset_s == pytest.approx(60.0)
    clock.now += 19.9
    assert not (await limiter.acquire("k", 3, None, 0)).allowed
    clock.now += 0.1
    assert (await limiter.acquire("k", 3, None, 0)).allowed
    assert (
        await limiter.acquire("other", 3, None, 0)
    ).allowed  # separate callers, separate buckets


@pytest.mark.parametrize("now", [500.49469980918883, 1000.0])  # (now + 60) - 60 > now, and not
async def test_the_whole_capacity_is_granted_whatever_the_clock_reads(
    clock: Clock, now: float
) -> None:
    clock.now = now
    limiter = MemoryLimiter(clock=clock)
    assert (await limiter.acquire("one", 1, None, 0)).allowed  # a budget of one request
    assert [(await limiter.acquire("seven", 7, None, 0)).allowed for _ in range(8)] == [
        *[True] * 7,
        False,
    ]


@pytest.mark.parametrize("now", [16372.768376455295, 1000.0])  # (now + 60) - now < 60
async def test_a_full_bucket_reads_full_whatever_the_clock_reads(clock: Clock, now: float) -> None:
    """The headers of a caller who has taken nothing say the whole budget (an Ollama
    load, which counts a request and reserves no token, read 99,999 of 100,000)."""
    clock.now = now
    decision = await MemoryLimiter(clock=clock).acquire("k", 10, 100_000, 0)
    assert decision.tokens is not None
    assert decision.tokens.remaining == 100_000
    peeked = await MemoryLimiter(clock=clock).peek("k", 10, 100_000)
    assert peeked.tokens is not None
    assert peeked.tokens.remaining == 100_000


async def test_requests_and_tokens_are_taken_together_or_not_at_all(clock: Clock) -> None:
    limiter = MemoryLimiter(clock=clock)
    assert (await limiter.acquire("k", 10, 100, 80)).allowed
    refused = await limiter.acquire("k", 10, 100, 30)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(6.0)  # 10 tokens short at 100/min
    assert refused.requests is not None
    assert refused.requests.remaining == 9  # the refused call took no request


async def test_a_cost_over_the_whole_capacity_never_fits(clock: Clock) -> None:
    decision = await MemoryLimiter(clock=clock).acquire("k", None, 100, 101)
    assert (decision.allowed, decision.fits_ever) == (False, False)


async def test_settlement_moves_the_budget_and_may_leave_it_below_zero(clock: Clock) -> None:
    limiter = MemoryLimiter(clock=clock)
    assert (await limiter.acquire("k", None, 100, 50)).allowed
    limiter.settle("k", 100, -50)  # used nothing: all given back
    assert (await limiter.acquire("k", None, 100, 100)).allowed
    limiter.settle("k", 100, 60)  # used 60 more than reserved: overdrawn
    decision = await limiter.acquire("k", None, 100, 0)
    assert not decision.allowed
    assert decision.retry_after_s == pytest.approx(36.0)


async def test_workers_share_a_capacity(clock: Clock) -> None:
    limiter = MemoryLimiter(share=1 / 4, clock=clock)
    assert [(await limiter.acquire("k", 8, None, 0)).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]


async def test_going_over_a_reservation_is_charged_from_now(clock: Clock) -> None:
    limiter = MemoryLimiter(clock=clock)
    assert (await limiter.acquire("k", None, 20_000, 10)).allowed
    clock.now += 1.2  # the bucket has refilled meanwhile
    limiter.settle("k", 20_000, 300)
    decision = await limiter.peek("k", None, 20_000)
    assert decision.tokens is not None
    assert decision.tokens.remaining == 20_000 - 300
