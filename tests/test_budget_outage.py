"""PostgreSQL stopped (as a crash) and restarted under load: concurrent callers keep
reserving (against the last state seen while it is down), the batcher keeps their
settlements and applies them when it is back, and then each budget's spend is exactly
what the ledger says, nothing reserved is left, and no budget was overshot.
A PostgreSQL process of this test's own (tests/own_postgres.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from server.policy.budgets import Budgets
from server.store import open_store
from server.telemetry.metrics import Metrics
from server.usage import UsageBatcher, UsageRecord
from server.usage.budget import BudgetScope, LedgerFilter, Settlement
from tests.budget_state import ledger_cost, open_holds, period_state
from tests.own_postgres import OwnPostgres, postgres_binaries

pytestmark = pytest.mark.skipif(postgres_binaries() is None, reason="no PostgreSQL binaries")

LIMIT = 150_000
RESERVE = 1_000  # each call's estimate; it costs less


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    with OwnPostgres() as server:
        yield server


def scopes_of(key_id: str) -> list[BudgetScope]:
    """A key's own budget and its tier's budget for it: each call must fit both."""
    return [
        BudgetScope(f"key:{key_id}:total", "total", 0, None, LIMIT, LedgerFilter(key_id=key_id)),
        BudgetScope(
            f"tier:free:key:{key_id}:total", "total", 0, None, LIMIT - 5_000,
            LedgerFilter(key_id=key_id, tier="free"),
        ),
    ]  # fmt: skip


async def test_postgresql_stopped_and_restarted_under_load_spend_is_the_ledgers(
    own_postgres: OwnPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(own_postgres.url)
    assert store is not None
    await store.open()
    batcher = UsageBatcher(
        store, flush_interval_s=0.05, batch_size=50, max_pending=10_000, metrics=Metrics()
    )
    batcher.start()
    budgets = Budgets(
        store, flushed=batcher.flushed, retry_after_s=0.3, renew_every_s=0.2, sweep_every_s=0.5
    )
    budgets.start()
    keys = ["alpha", "beta"]
    stop = asyncio.Event()
    outage: list[float] = []  # [down, up] on the wall clock, in µs
    admitted_at: list[int] = []

    async def caller(n: int) -> None:
        key_id = keys[n % len(keys)]
        scopes = scopes_of(key_id)
        i = 0
        while not stop.is_set():
            i += 1
            hold = uuid.uuid4().hex
            arrival = time.time_ns() // 1000
            found = await budgets.reserve(hold, scopes, RESERVE)
            if not found.admitted:
                await asyncio.sleep(0.02)
                continue
            admitted_at.append(arrival)
            await asyncio.sleep(0.02)  # the call
            cost = RESERVE - (n * 37 + i * 11) % 50  # what it cost: at most the estimate
            batcher.record(
                UsageRecord(
                    hold, "r", "u", "m", "p", "grpc", 1, 1, "ok", 1.0, None, arrival,
                    cost_nanos=cost, key_id=key_id, tier="free",
                ),
                Settlement(hold, cost, tuple((s.name, s.start_us) for s in scopes)),
            )  # fmt: skip
            budgets.release(hold)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.3):
                    await batcher.flushed()

    with caplog.at_level(logging.WARNING, logger="tandem.budgets"):
        callers = [asyncio.create_task(caller(n)) for n in range(6)]
        await asyncio.sleep(0.6)  # every scope seen, some spend settled
        outage.append(time.time_ns() / 1000)
        await asyncio.to_thread(own_postgres.crash)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(own_postgres.restart)
        outage.append(time.time_ns() / 1000)
        await asyncio.sleep(2.0)  # back: the budgets run out, refusals begin
        stop.set()
        await asyncio.gather(*callers)
    await budgets.aclose()
    await batcher.drain()
    await store.aclose()

    assert "usage store failed" in caplog.text
    assert "answers again" in caplog.text
    during = [at for at in admitted_at if outage[0] < at < outage[1]]
    assert len(during) > 10  # admitted offline, against the last state seen
    url = own_postgres.url
    for key_id in keys:
        spent = await ledger_cost(url, key_id)
        assert spent > 0
        for scope in scopes_of(key_id):
            assert await period_state(url, scope.name, 0) == (spent, 0), scope.name
            assert spent <= scope.limit_nanos  # one replica: never past its budget
    assert await open_holds(url) == 0
    connection = await asyncpg.connect(url)
    try:
        records = await connection.fetchval("SELECT count(*) FROM usage_records")
    finally:
        await connection.close()
    assert records == len(admitted_at)  # nothing lost, nothing twice
