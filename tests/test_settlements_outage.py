"""Settlements Redis could not take are kept and applied, in order, once it answers:
a blip neither forgives a debt nor loses a refund. Each test runs its own redis-server,
frozen (SIGSTOP, as CLIENT PAUSE would) just before a stream ends."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from server.policy.limiter import LimiterEvents
from server.policy.pending_writes import PendingWrites, Write
from server.policy.redis_limiter import RedisLimiter
from tests.own_redis import OwnRedis
from tests.servers import TandemProcess, start_tandem
from tests.stores import REDIS_URL

TPM = 120  # two tokens a second: a settlement of 50 tokens moves the bucket by 25 s

CONFIG = """
providers: [{name: demo, kind: mock, chunk_delay_ms: 50}]
models: [{name: echo, provider: demo}]
tiers:
  free: {default_model: echo, tokens_per_minute: %(tpm)d}
rate_limits: {backend: redis, url: "%(url)s", prefix: "%(prefix)s"}
"""


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


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


def _wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


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
    _wait_for(lambda: _metric(gateway, "tandem_rate_limit_settlements_deferred_total") >= 1)
    own_redis.resume()
    _wait_for(lambda: _metric(gateway, "tandem_rate_limit_settlements_applied_late_total") >= 1)
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
    _wait_for(lambda: _metric(gateway, "tandem_rate_limit_settlements_deferred_total") >= 1)
    own_redis.resume()
    _wait_for(lambda: _metric(gateway, "tandem_rate_limit_settlements_applied_late_total") >= 1)
    # 20 tokens used: at most 10 s ahead; without the refund it would be 50 s, less the wait
    assert _bucket_ahead_s(own_redis, prefix) <= 20 * 60 / TPM + 1.0


def test_pending_settlements_are_applied_at_exit_if_redis_answers_within_the_drain(
    gateway: TandemProcess, own_redis: OwnRedis, prefix: str
) -> None:
    started = time.monotonic()
    _stream_pausing_redis(gateway, own_redis, words=50)
    _wait_for(lambda: _metric(gateway, "tandem_rate_limit_settlements_deferred_total") >= 1)
    gateway.proc.terminate()  # SIGTERM while Redis is still frozen
    _wait_for(lambda: "draining" in gateway.stderr())
    own_redis.resume()
    assert gateway.proc.wait(60) == 0, gateway.stderr()
    expected = 100 * 60 / TPM - (time.monotonic() - started)
    assert _bucket_ahead_s(own_redis, prefix) >= expected - 1.0


# The queue's own rules, with a scripted backend


class _Backend:
    def __init__(self) -> None:
        self.up = True
        self.applied: list[str] = []

    async def send(self, writes: list[Write]) -> bool:
        if self.up:
            self.applied += [w.value for w in writes]
        return self.up


class _Counts:
    def __init__(self) -> None:
        self.deferred = self.late = self.dropped = 0

    def events(self) -> LimiterEvents:
        def add(name: str) -> Callable[[int], None]:
            def count(n: int) -> None:
                setattr(self, name, getattr(self, name) + n)

            return count

        return LimiterEvents(
            settlement_deferred=add("deferred"),
            settlement_applied_late=add("late"),
            settlement_dropped=add("dropped"),
        )


async def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_kept_writes_are_applied_in_order_once_the_backend_answers() -> None:
    backend, counts = _Backend(), _Counts()
    writes = PendingWrites(backend.send, counts.events(), retry_s=0.05)
    backend.up = False
    for value in "abc":
        writes.add("s", "k", value)
    await _until(lambda: counts.deferred == 3)
    writes.add("s", "k", "d")  # queued behind the kept ones
    backend.up = True
    await _until(lambda: backend.applied == ["a", "b", "c", "d"])
    assert (counts.late, counts.dropped, len(writes)) == (3, 0, 0)
    await writes.drain(1.0)


async def test_writes_older_than_a_minute_or_past_the_bound_are_dropped_and_counted() -> None:
    backend, counts = _Backend(), _Counts()
    writes = PendingWrites(backend.send, counts.events(), retry_s=0.05, max_pending=3)
    backend.up = False
    for value in "abcd":  # the bound keeps the newest three
        writes.add("s", "k", value)
    assert counts.dropped == 1
    backend.up = True
    await _until(lambda: backend.applied == ["b", "c", "d"])

    aged = PendingWrites(backend.send, counts.events(), retry_s=0.05, max_age_s=0.0)
    backend.up, backend.applied = False, []
    aged.add("s", "k", "old")
    await _until(lambda: counts.dropped == 2)  # too old to matter: given up
    backend.up = True
    await aged.drain(1.0)
    await writes.drain(1.0)
    assert backend.applied == []


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
        await _until(lambda: len(lost) == 1 and not len(limiter._writes))
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


async def test_a_writer_ended_by_a_bug_is_started_again_by_the_next_write() -> None:
    backend, counts = _Backend(), _Counts()
    writes = PendingWrites(backend.send, counts.events(), retry_s=0.05)
    send, failed = backend.send, list[list[Write]]()

    async def fails_once(batch: list[Write]) -> bool:
        if not failed:
            failed.append(batch)
            raise RuntimeError("a bug")
        return await send(batch)

    writes._send = fails_once
    writes.add("s", "k", "a")
    await _until(lambda: bool(failed))
    writes.add("s", "k", "b")
    await _until(lambda: backend.applied == ["a", "b"])
    await writes.drain(1.0)
