"""Budgets in the store, on a real SQLite file and the local PostgreSQL: a reservation is
all or nothing, settlement rides the ledger write (once, for records newly inserted), a
new period starts from the ledger and clean at its boundary, expired holds are swept.
State is read back straight from the database (tests/budget_state.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from server.config import Period
from server.store import Store, open_store
from server.usage.budget import BudgetScope, LedgerFilter, Settlement, period_bounds
from server.usage.record import UsageRecord, microseconds_of
from tests.budget_state import ledger_cost, open_holds, period_state


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    assert opened is not None
    await opened.open()
    yield opened
    await opened.aclose()


def key_scope(key_id: str, limit: int, at_us: int, period: Period = "daily") -> BudgetScope:
    start, end = period_bounds(period, at_us)
    return BudgetScope(
        f"key:{key_id}:{period}", period, start, end, limit, LedgerFilter(key_id=key_id)
    )


def record(
    record_id: str,
    key_id: str | None,
    cost: int,
    at_us: int,
    *,
    tier: str = "free",
    user: str = "u",
    caller_kind: str = "user",
) -> UsageRecord:
    return UsageRecord(
        record_id, "r", user, "m", "p", "grpc", 1, 1, "ok", 1.0, None, at_us,
        caller_kind=caller_kind, cost_nanos=cost, key_id=key_id, tier=tier,
    )  # fmt: skip


def settles(record_id: str, cost: int, *scopes: BudgetScope) -> Settlement:
    return Settlement(record_id, cost, tuple((s.name, s.start_us) for s in scopes))


def now_us() -> int:
    return time.time_ns() // 1000


def new_id() -> str:
    return uuid.uuid4().hex


async def test_a_reservation_is_all_or_nothing_across_scopes(store: Store, store_url: str) -> None:
    at = now_us()
    roomy, tight = key_scope("roomy", 1_000, at), key_scope("tight", 250, at)
    first = await store.reserve_budget(new_id(), [roomy, tight], 200, 30)
    assert first.admitted
    assert [(s.spent_nanos, s.reserved_nanos, s.remaining_nanos) for s in first.states] == [
        (0, 200, 800),
        (0, 200, 50),
    ]
    refused = await store.reserve_budget(new_id(), [roomy, tight], 200, 30)
    assert not refused.admitted  # tight has 50 left: roomy takes nothing either
    assert [s.reserved_nanos for s in refused.states] == [200, 200]
    assert await period_state(store_url, roomy.name, roomy.start_us) == (0, 200)
    assert await period_state(store_url, tight.name, tight.start_us) == (0, 200)
    assert await open_holds(store_url) == 2  # the first reservation's, one per scope
    assert (await store.reserve_budget(new_id(), [roomy], 800, 30)).admitted  # exactly the rest
    assert not (await store.reserve_budget(new_id(), [roomy], 1, 30)).admitted


async def test_a_batch_written_twice_settles_once_and_spend_is_the_ledgers(
    store: Store, store_url: str
) -> None:
    at = now_us()
    scope = key_scope("twice", 10_000, at)
    held, unheld = new_id(), new_id()
    assert (await store.reserve_budget(held, [scope], 3_000, 30)).admitted
    batch = [record(held, "twice", 1_234, at), record(unheld, "twice", 66, at)]
    settlements = [settles(held, 1_234, scope), settles(unheld, 66, scope)]  # unheld: offline
    await store.write_usage(batch, settlements)
    assert await period_state(store_url, scope.name, scope.start_us) == (1_300, 0)
    await store.write_usage(batch, settlements)  # a retry of a batch that did land
    assert await period_state(store_url, scope.name, scope.start_us) == (1_300, 0)
    assert await ledger_cost(store_url, "twice") == 1_300
    assert await open_holds(store_url) == 0


async def test_a_new_periods_row_starts_from_the_ledger_of_its_caller_only(
    store: Store, store_url: str
) -> None:
    at = now_us()
    await store.write_usage(
        [
            record(new_id(), "mine", 500, at),
            record(new_id(), "mine", 7, at - 86_400_000_000 * 40),  # a period long gone
            record(new_id(), "theirs", 900, at),
            record(new_id(), "mine", 40, at, tier="pro"),  # the key's, another tier
            record(new_id(), None, 300, at, user="alice"),
            record(new_id(), "alices-key", 4_000, at, user="alice"),  # a key's, not her JWT's
            record(new_id(), None, 20, at, user="anonymous", caller_kind="anonymous"),
        ]
    )  # no budget row exists yet: their settlements had nothing to add to
    start, end = period_bounds("monthly", at)
    key = key_scope("mine", 10_000, at, "monthly")
    tier_of_key = BudgetScope(
        "tier:free:key:mine:monthly", "monthly", start, end, 10_000,
        LedgerFilter(key_id="mine", tier="free"),
    )  # fmt: skip
    alice = BudgetScope(
        "tier:free:sub:alice:monthly", "monthly", start, end, 10_000,
        LedgerFilter(tier="free", user="alice", caller_kind="user"),
    )  # fmt: skip
    anonymous = BudgetScope(
        "tier:free:anonymous:monthly", "monthly", start, end, 10_000,
        LedgerFilter(tier="free", caller_kind="anonymous"),
    )  # fmt: skip
    found = await store.reserve_budget(new_id(), [key, tier_of_key, alice, anonymous], 1, 30)
    assert [s.spent_nanos for s in found.states] == [540, 500, 300, 20]


async def test_a_read_takes_the_ledgers_sum_for_a_new_period_and_makes_no_row(
    store: Store, store_url: str
) -> None:
    at = now_us()
    await store.write_usage(
        [
            record(new_id(), "reader", 500, at),
            record(new_id(), "reader", 7, at - 86_400_000_000 * 40),  # a period long gone
            record(new_id(), "other", 900, at),
            record(new_id(), None, 300, at, user="bob"),
        ]
    )
    start, end = period_bounds("monthly", at)
    key = key_scope("reader", 10_000, at, "monthly")
    bob = BudgetScope(
        "tier:free:sub:bob:monthly", "monthly", start, end, 10_000,
        LedgerFilter(tier="free", user="bob", caller_kind="user"),
    )  # fmt: skip
    read = await store.budget_states([key, bob])
    assert [(s.scope, s.spent_nanos, s.reserved_nanos) for s in read] == [
        (key, 500, 0),
        (bob, 300, 0),
    ]
    assert await period_state(store_url, key.name, key.start_us) is None  # a read writes nothing
    assert await period_state(store_url, bob.name, bob.start_us) is None
    # once the row is made (by a reservation), a read is the row: reserved included
    held = new_id()
    assert (await store.reserve_budget(held, [key], 2_000, 30)).admitted
    [state] = await store.budget_states([key])
    assert (state.spent_nanos, state.reserved_nanos, state.remaining_nanos) == (500, 2_000, 7_500)
    await store.write_usage([record(held, "reader", 1_200, at)], [settles(held, 1_200, key)])
    [state] = await store.budget_states([key])
    assert (state.spent_nanos, state.reserved_nanos) == (1_700, 0)
    assert await store.budget_states([]) == ()


async def test_a_period_boundary_starts_a_clean_row_and_old_holds_settle_into_the_old(
    store: Store, store_url: str
) -> None:
    before = microseconds_of(datetime(2026, 12, 7, 23, 59, 59, 500_000, tzinfo=UTC))
    after = microseconds_of(datetime(2026, 12, 8, 0, 0, 0, 200_000, tzinfo=UTC))
    old, new = key_scope("edge", 1_000, before), key_scope("edge", 1_000, after)
    assert new.start_us == old.end_us  # the boundary, injected: no clock involved
    late = new_id()
    assert (await store.reserve_budget(late, [old], 900, 30)).admitted
    assert not (await store.reserve_budget(new_id(), [old], 200, 30)).admitted
    fresh = await store.reserve_budget(new_id(), [new], 200, 30)
    assert fresh.admitted
    assert (fresh.states[0].spent_nanos, fresh.states[0].reserved_nanos) == (0, 200)
    # the call admitted before midnight ends after it: it settles into its own period
    await store.write_usage([record(late, "edge", 950, before)], [settles(late, 950, old)])
    assert await period_state(store_url, old.name, old.start_us) == (950, 0)
    assert await period_state(store_url, new.name, new.start_us) == (0, 200)


async def test_expired_holds_are_swept_once_and_a_late_record_adds_spend_only(
    store: Store, store_url: str
) -> None:
    at = now_us()
    scope = key_scope("lease", 1_000, at)
    dead, alive = new_id(), new_id()
    assert (await store.reserve_budget(dead, [scope], 400, 0.3)).admitted
    assert (await store.reserve_budget(alive, [scope], 500, 0.3)).admitted
    await store.renew_holds([alive], 30)
    assert await store.release_expired_holds() == 0  # not yet
    await asyncio.sleep(0.5)
    assert await store.release_expired_holds() == 1  # the dead replica's, not the renewed
    assert await store.release_expired_holds() == 0  # idempotent: every replica sweeps
    assert await period_state(store_url, scope.name, scope.start_us) == (0, 500)
    # the swept hold's replica was only partitioned: its record still comes
    await store.write_usage([record(dead, "lease", 350, at)], [settles(dead, 350, scope)])
    assert await period_state(store_url, scope.name, scope.start_us) == (350, 500)
    await store.renew_holds([dead], 30)  # a swept hold is not brought back
    await store.write_usage([record(alive, "lease", 480, at)], [settles(alive, 480, scope)])
    assert await period_state(store_url, scope.name, scope.start_us) == (830, 0)
    assert await ledger_cost(store_url, "lease") == 830
