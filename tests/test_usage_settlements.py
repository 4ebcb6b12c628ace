"""The batcher carries budget settlements beside their records: applied in the batch's
transaction, never dropped silently for `max_pending`, and `flushed()` wakes it so a
caller sees its own spend at once (a real SQLite file and the local PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from server.store import Store, open_store
from server.telemetry.metrics import Metrics
from server.usage import NullRecorder, UsageBatcher, UsageQuery, UsageRecord
from server.usage.budget import BudgetScope, LedgerFilter, Settlement
from tests.budget_state import ledger_cost, open_holds, period_state

SCOPE = BudgetScope("key:flush:total", "total", 0, None, 10**9, LedgerFilter(key_id="flush"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    assert opened is not None
    await opened.open()
    yield opened
    await opened.aclose()


def record(cost: int) -> tuple[UsageRecord, Settlement]:
    record_id = uuid.uuid4().hex
    now = time.time_ns() // 1000
    return (
        UsageRecord(
            record_id, "r", "u", "m", "p", "grpc", 1, 1, "ok", 1.0, None, now,
            cost_nanos=cost, key_id="flush", tier="free",
        ),
        Settlement(record_id, cost, ((SCOPE.name, 0),)),
    )  # fmt: skip


def batcher_of(store: Store, max_pending: int = 100) -> UsageBatcher:
    return UsageBatcher(
        store, flush_interval_s=60, batch_size=1000, max_pending=max_pending, metrics=Metrics()
    )


async def test_flushed_wakes_the_batcher_and_the_settlement_lands_with_its_record(
    store: Store, store_url: str
) -> None:
    batcher = batcher_of(store)
    batcher.start()
    held, settlement = record(700)
    assert (await store.reserve_budget(held.id, [SCOPE], 1_000, 30)).admitted
    batcher.record(held, settlement)
    batcher.record(record(5)[0])  # no budget: no settlement
    started = time.monotonic()
    async with asyncio.timeout(2):
        await batcher.flushed()  # the interval is 60 s: woken, not waited for
    assert time.monotonic() - started < 1
    assert (await store.query_usage(UsageQuery())).totals.requests == 2
    assert await period_state(store_url, SCOPE.name, 0) == (700, 0)
    assert await open_holds(store_url) == 0
    async with asyncio.timeout(0.1):
        await batcher.flushed()  # nothing queued: at once
        await NullRecorder().flushed()
    await batcher.drain()


async def test_callers_flushing_at_once_share_batches(store: Store, store_url: str) -> None:
    writes: list[int] = []
    write_usage = store.write_usage

    async def counted(*args: object) -> None:
        writes.append(1)
        await write_usage(*args)  # type: ignore[arg-type]

    store.write_usage = counted  # type: ignore[method-assign,assignment]
    batcher = batcher_of(store)
    batcher.start()
    await store.reserve_budget(uuid.uuid4().hex, [SCOPE], 0, 30)  # the scope's row

    async def call(i: int) -> None:
        batcher.record(*record(10 + i))
        await batcher.flushed()

    await asyncio.gather(*(call(i) for i in range(20)))
    assert await period_state(store_url, SCOPE.name, 0) == (sum(range(10, 30)), 0)
    assert len(writes) < 20  # group commit: the calls queued during a write share the next
    await batcher.drain()


async def test_a_record_with_a_settlement_is_kept_past_max_pending(
    store: Store, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    batcher = batcher_of(store, max_pending=4)  # not started: as if the store were down
    await store.reserve_budget(uuid.uuid4().hex, [SCOPE], 0, 30)  # the scope's row
    with caplog.at_level(logging.ERROR, logger="tandem.usage"):
        for _ in range(4):
            batcher.record(record(0)[0])
        for cost in (100, 200, 300, 400):
            batcher.record(*record(cost))  # kept, past the bound, up to twice it
        batcher.record(record(0)[0])  # no settlement: dropped, as before
        assert "with budget settlements" not in caplog.text
        batcher.record(*record(9_999))  # past twice the bound: dropped, counted, said
        batcher.record(*record(9_999))
        assert caplog.text.count("dropping usage records with budget settlements") == 1
    dropped = batcher._metrics.registry.get_sample_value("tandem_usage_dropped_records_total")
    assert dropped == 3
    assert len(batcher._pending) == 8
    await batcher.drain()
    assert await period_state(store_url, SCOPE.name, 0) == (1_000, 0)
    assert await ledger_cost(store_url, "flush") == 1_000
