"""The Redis backend: one budget for every replica, on the real local Redis."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from server.policy.redis_limiter import RedisLimiter
from tests.eventually import eventually_async
from tests.servers import TandemProcess, start_tandem
from tests.stores import REDIS_URL, redis_limits_config


@pytest.fixture
def prefix() -> str:
    return f"tandem-test:{uuid.uuid4().hex}:"


@pytest.fixture
async def limiter(prefix: str) -> AsyncIterator[RedisLimiter]:
    limiter = RedisLimiter(REDIS_URL, prefix=prefix)
    yield limiter
    await limiter.aclose()


async def test_buckets_behave_as_in_memory(limiter: RedisLimiter) -> None:
    decisions = [await limiter.acquire("k", 3, 100, 10) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.requests.remaining for d in decisions if d.requests] == [2, 1, 0, 0]
    assert [d.tokens.remaining for d in decisions if d.tokens] == [90, 80, 70, 70]
    assert decisions[3].retry_after_s == pytest.approx(20.0, abs=0.5)
    never = await limiter.acquire("k2", None, 100, 101)
    assert (never.allowed, never.fits_ever) == (False, False)


async def test_settlement_reaches_redis(limiter: RedisLimiter) -> None:
    assert (await limiter.acquire("k", None, 100, 100)).allowed
    limiter.settle("k", 100, -60)

    async def returned() -> bool:  # settlements are sent without waiting
        tokens = (await limiter.peek("k", None, 100)).tokens
        return tokens is not None and tokens.remaining >= 60

    await eventually_async(returned)
    decision = await limiter.acquire("k", None, 100, 50)
    assert decision.allowed
    assert decision.tokens is not None
    assert decision.tokens.remaining <= 11


async def test_unreachable_redis_fails_open_fast_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = RedisLimiter("redis://127.0.0.1:1/0", prefix="x:")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tandem.limits"):
        decisions = [await limiter.acquire("k", 2, None, 0) for _ in range(3)]
    assert time.monotonic() - started < 1.0
    assert [d.allowed for d in decisions] == [True, True, False]  # the local limit still holds
    assert sum("Redis unreachable" in r.message for r in caplog.records) == 1
    await limiter.aclose()


def test_three_replicas_share_one_budget(tmp_path: Path, prefix: str) -> None:
    rpm = 120
    config = redis_limits_config(REDIS_URL, prefix, rpm)
    replicas: list[TandemProcess] = []
    try:
        replicas += [start_tandem(tmp_path, config) for _ in range(3)]
        statuses: list[int] = []

        async def fire(base_url: str, until: float) -> None:
            async with httpx.AsyncClient(base_url=base_url) as http:
                while time.monotonic() < until:
                    response = await http.post(
                        "/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": "x"}]},
                    )
                    statuses.append(response.status_code)

        async def run() -> float:
            started = time.monotonic()
            until = started + 3.0
            await asyncio.gather(*(fire(r.base_url, until) for r in replicas for _ in range(8)))
            return time.monotonic() - started

        elapsed = asyncio.run(run())
    finally:
        for replica in replicas:
            replica.kill()
    admitted = statuses.count(200)
    allowance = rpm + rpm / 60 * elapsed
    print(f"admitted {admitted} of {len(statuses)} in {elapsed:.2f} s; allowance {allowance:.1f}")
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) > 0
    assert admitted <= allowance * 1.01, (admitted, allowance, len(statuses))
    assert admitted >= rpm * 0.9  # the budget was really used, not refused wholesale
