"""Settlements Redis could not take are kept and applied, in order, once it answers:
a blip neither forgives a debt nor loses a refund. Each test runs its own redis-server,
frozen (SIGSTOP, as CLIENT PAUSE would) just before a stream ends."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from server.policy.pending_writes import Write
from server.policy.redis_limiter import RedisLimiter
from tests.eventually import eventually, eventually_async
from tests.own_redis import OwnRedis
from tests.servers import TandemProcess, start_tandem
from tests.stores import REDIS_URL

TPM = 120  # two tokens a second: a settlement of 50 tokens moves the bucket by 25 s
WAIT_S = 30.0  # for what Redis coming back brings about; never a timing assertion

CONFIG = """
providers: [{name: demo, kind: mock, chunk_delay_ms: 50}]
models: [{name: echo, provider: demo}]
tiers:
  free: {default_model: echo, tokens_per_minute: %(tpm)d}
rate_limits: {backend: redis, url: "%(url)s", prefix: "%(prefix)s"}
"""


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    with OwnRedis(tmp_path) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"tandem-test:{uuid.uuid4().hex}:"


@pytest.fixture
def gateway(tmp_path: Path, own_redis: OwnRedis, prefix: str) -> Iterator[TandemProcess]:
    config = CONFIG % {"tpm": TPM, "url": own_redis.url, "prefix": prefix}
    process = start_tandem(tmp_path, config)
    yield process
    process.kill()


def _metric(process: TandemProcess, name: str) -> float:
    for line in httpx.get(f"{process.base_url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _counted(process: TandemProcess, what: str) -> None:
    """Until a settlement is counted as `what` (deferred, applied_late)."""
    name = f"tandem_rate_limit_settlements_{what}_total"
    eventually(lambda: _metric(process, name) >= 1, WAIT_S, what=name)


def _stream_pausing_redis(
    process: TandemProcess, own_redis: OwnRedis, words: int, **extra: Any
) -> dict[str, Any]:
    """Stream an answer, freezing Redis after the first chunk (so the admission went to
    Redis and the settlement cannot); return the usage the stream reported."""
    body = {
        "model": "echo",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "w " * words}],
        **extra,
    }
    usage: dict[str, Any] = {}
    with httpx.stream(
        "POST", f"{process.base_url}/v1/chat/completions", json=body, timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            if not usage:
                own_redis.pause()
            usage = orjson.loads(line[6:]).get("usage") or usage or {"started": True}
    assert "total_tokens" in usage
    return usage


def _bucket_ahead_s(own_redis: OwnRedis, prefix: str) -> float:
    """How far the caller's tokens bucket is ahead of Redis's clock (0: full)."""
    with own_redis.client() as client:
        seconds, micros = client.time()
        tat = client.get(f"{prefix}anonymous:t")
    return 0.0 if tat is None else (float(tat) - (seconds * 1e6 + micros)) / 1e6


def test_a_charge_kept_through_a_blip_lands_in_the_bucket(
    gateway: TandemProcess, own_redis: OwnRedis, prefix: str
) -> None:
    started = time.monotonic()
    usage = _stream_pausing_redis(gateway, own_redis, words=50)  # reserves 50, uses 100
    assert usage["total_tokens"] == 100
    _counted(gateway, "deferred")
    own_redis.resume()
    _counted(gateway, "applied_late")
    # the whole 100 tokens (50 s at 2 a second) were taken from the bucket since `started`;
    # the admission alone (the debt forgiven) would be 25 s
    expected = 100 * 60 / TPM - (time.monotonic() - started)
    ahead = _bucket_ahead_s(own_redis, prefix)
    assert ahead >= expected - 1.0
    # once: the call that timed out runs when Redis wakes, and the write is sent again
    assert ahead <= 100 * 60 / TPM + 1.0
    assert _metric(gateway, "tandem_rate_limit_settlements_dropped_total") == 0


def test_a_refund_kept_through_a_blip_lands_in_the_bucket(
    gateway: TandemProcess, own_redis: OwnRedis, prefix: str
) -> None:
    usage = _stream_pausing_redis(gateway, own_redis, words=10, max_tokens=90)  # reserves 100
    assert usage["total_tokens"] == 20
    _counted(gateway, "deferred")
    own_redis.resume()
    _counted(gateway, "applied_late")
    # 20 tokens used: at most 10 s ahead; without the refund it would be 50 s, less the wait
    assert _bucket_ahead_s(own_redis, prefix) <= 20 * 60 / TPM + 1.0


def test_pending_settlements_are_applied_at_exit_if_redis_answers_within_the_drain(
    gateway: TandemProcess, own_redis: OwnRedis, prefix: str
) -> None:
    started = time.monotonic()
    _stream_pausing_redis(gateway, own_redis, words=50)
    _counted(gateway, "deferred")
    gateway.proc.terminate()  # SIGTERM while Redis is still frozen
    eventually(lambda: "draining" in gateway.stderr(), WAIT_S)
    own_redis.resume()
    assert gateway.proc.wait(60) == 0, gateway.stderr()
    expected = 100 * 60 / TPM - (time.monotonic() - started)
    assert _bucket_ahead_s(own_redis, prefix) >= expected - 1.0


async def test_a_settlement_whose_reply_was_lost_is_applied_once(prefix: str) -> None:
    """Redis ran it, but the reply never came (a timeout, a cut link): sent again,
    it must not be charged twice."""
    limiter = RedisLimiter(REDIS_URL, prefix=prefix)
    apply = limiter._apply
    lost: list[Any] = []

    async def reply_lost_once(**kwargs: Any) -> Any:
        reply = await apply(**kwargs)
        if not lost:
            lost.append(reply)
            raise TimeoutError
        return reply

    limiter._apply = reply_lost_once  # type: ignore[assignment]
    try:
        assert (await limiter.acquire("k", None, 60, 1)).allowed  # 1 s ahead
        limiter.settle("k", 60, 10)  # +10 s, once

        async def applied() -> bool:
            return len(lost) == 1 and not len(limiter._writes)

        await eventually_async(applied)
        with redis.Redis.from_url(REDIS_URL) as client:
            seconds, micros = client.time()
            ahead = (float(client.get(f"{prefix}k:t")) - (seconds * 1e6 + micros)) / 1e6
    finally:
        await limiter.aclose()
    assert 5 < ahead <= 11


async def test_a_charge_held_past_its_buckets_expiry_lands_as_of_when_its_call_ended(
    prefix: str,
) -> None:
    """A +60 s charge on a bucket that had refilled and expired, held 30 s through a
    blip: it lands as of the call's end (30 s ahead of now), not as of now (60 s)."""
    limiter = RedisLimiter(REDIS_URL, prefix=prefix)
    bucket = f"{prefix}k:t"
    try:
        held = Write("s", bucket, str(60_000_000), time.monotonic() - 30, 0)
        assert await limiter._send_writes([held])
        with redis.Redis.from_url(REDIS_URL) as client:
            seconds, micros = client.time()
            ahead = (float(client.get(bucket)) - (seconds * 1e6 + micros)) / 1e6
    finally:
        await limiter.aclose()
    assert 28 < ahead <= 31
