"""The batcher against the real stores: batches by size and by interval, idempotent
writes, and PostgreSQL going away (through a proxy the test cuts) and coming back."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence

import pytest

from server.context import new_id
from server.store import Store, open_store
from server.telemetry.metrics import Metrics
from server.usage import UsageBatcher, UsageQuery, UsageRecord
from server.usage.budget import Settlement
from tests.eventually import eventually_async
from tests.tcp_proxy import TcpProxy


def make_records(count: int, user: str = "batcher") -> list[UsageRecord]:
    now = time.time_ns() // 1000
    return [
        UsageRecord(
            new_id(), f"req-{i}", user, "echo", "demo", "grpc", i, 1, "ok", 1.5, None, now + i
        )
        for i in range(count)
    ]


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    assert opened is not None
    await opened.open()
    yield opened
    await opened.aclose()


class Spy:
    """The real store, with the size of every batch written noted."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.batches: list[int] = []

    async def write_usage(
        self, records: Sequence[UsageRecord], settlements: Sequence[Settlement] = ()
    ) -> None:
        await self.store.write_usage(records, settlements)
        self.batches.append(len(records))


async def stored(store: Store, want: int) -> int:
    """How many records the store holds, once it holds at least `want`."""

    async def enough() -> int:
        count = (await store.query_usage(UsageQuery(limit=1))).totals.requests
        assert count >= want, f"{count} of {want} records stored"
        return count

    return await eventually_async(enough)


def batching(spy: Spy, count: int, flush_interval_s: float, batch_size: int) -> UsageBatcher:
    """A started batcher that writes to `spy`, handed `count` records."""
    batcher = UsageBatcher(
        spy,
        flush_interval_s=flush_interval_s,
        batch_size=batch_size,
        max_pending=100,
        metrics=Metrics(),
    )
    batcher.start()
    for record in make_records(count):
        batcher.record(record)
    return batcher


async def test_a_full_batch_is_written_without_waiting_for_the_interval(store: Store) -> None:
    spy = Spy(store)
    batcher = batching(spy, 12, flush_interval_s=60, batch_size=5)
    assert await stored(store, 10) == 10
    assert spy.batches == [5, 5]
    assert len(batcher._pending) == 2
    await batcher.drain()
    assert await stored(store, 12) == 12
    assert spy.batches == [5, 5, 2]


async def test_a_partial_batch_is_written_after_the_interval(store: Store) -> None:
    spy = Spy(store)
    batcher = batching(spy, 3, flush_interval_s=0.5, batch_size=1000)
    assert (await store.query_usage(UsageQuery())).totals.requests == 0
    assert await stored(store, 3) == 3
    assert spy.batches == [3]
    await batcher.drain()
    assert spy.batches == [3]  # nothing left to write


async def test_writing_a_batch_again_stores_each_record_once(store: Store) -> None:
    records = make_records(6)
    await store.write_usage(records[:4])
    await store.write_usage(records[:4])  # a batch retried after a lost acknowledgement
    await store.write_usage(records[2:])
    page = await store.query_usage(UsageQuery(limit=100))
    assert page.totals.requests == 6
    assert sorted(r.id for r in page.records) == sorted(r.id for r in records)
    assert page.records == sorted(records, key=lambda r: r.created_at, reverse=True)
    assert page.totals.prompt_tokens == sum(range(6))


def _metric(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None
    return value


@pytest.fixture
async def proxied_store(proxy: TcpProxy, proxied_pg: tuple[str, str]) -> AsyncIterator[Store]:
    """The PostgreSQL store, reached through the proxy a test may cut."""
    store = open_store(proxied_pg[1])
    assert store is not None
    await store.open()
    yield store
    proxy.restore()
    await store.aclose()


async def test_beyond_max_pending_records_are_dropped_counted_and_logged(
    proxy: TcpProxy, proxied_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store = proxied_store
    metrics = Metrics()
    batcher = UsageBatcher(
        store, flush_interval_s=0.05, batch_size=10, max_pending=20, metrics=metrics
    )
    batcher.start()
    proxy.cut()
    with caplog.at_level(logging.WARNING, logger="tandem.usage"):
        for record in make_records(25):
            batcher.record(record)
        assert len(batcher._pending) == 20
        assert _metric(metrics, "tandem_usage_dropped_records_total") == 5
        assert _metric(metrics, "tandem_usage_pending_records") == 20

        async def logged() -> bool:
            return "usage store unavailable" in caplog.text

        await eventually_async(logged)
        assert "dropping usage records" in caplog.text
        proxy.restore()
        await batcher.drain()
    assert len(batcher._pending) == 0
    assert await stored(store, 20) == 20


async def test_the_shutdown_flush_gives_up_at_its_deadline_and_says_so(
    proxy: TcpProxy, proxied_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    batcher = UsageBatcher(
        proxied_store, flush_interval_s=60, batch_size=10, max_pending=100, metrics=Metrics()
    )
    batcher.start()
    proxy.cut()
    for record in make_records(3):
        batcher.record(record)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="tandem.usage"):
        await batcher.drain(timeout_s=1.0)
    assert time.monotonic() - started < 3
    assert "3 usage records lost" in caplog.text
