"""`Budgets`, the policy's side of budgets, on real stores: leases renewed while a call
runs and a dead replica's swept; while the store is down (PostgreSQL through a proxy the
test cuts; a SQLite file another process has locked), admission against the last state
seen, a scope never seen refused with 503, one warning each way."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from server.config import Period
from server.errors import UnavailableError
from server.policy.budgets import Budgets
from server.store import Store, open_store
from server.usage.budget import BudgetScope, LedgerFilter, Reservation, ScopeState
from tests.budget_state import open_holds, period_state
from tests.eventually import eventually_async
from tests.tcp_proxy import TcpProxy


def scope(key_id: str, limit: int, start_us: int = 0) -> BudgetScope:
    period: Period = "total" if start_us == 0 else "daily"
    end = None if start_us == 0 else start_us + 86_400_000_000
    return BudgetScope(
        f"key:{key_id}:{period}", period, start_us, end, limit, LedgerFilter(key_id=key_id)
    )


def new_id() -> str:
    return uuid.uuid4().hex


async def opened(url: str) -> Store:
    store = open_store(url)
    assert store is not None
    await store.open()
    return store


@pytest.fixture
async def two_replicas(store_url: str) -> AsyncIterator[tuple[Store, Store]]:
    first, second = await opened(store_url), await opened(store_url)
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_a_live_replica_keeps_its_holds_and_a_dead_ones_are_swept(
    two_replicas: tuple[Store, Store], store_url: str
) -> None:
    live_store, dead_store = two_replicas
    live = Budgets(live_store, lease_s=0.6, renew_every_s=0.1, sweep_every_s=0.1)
    dead = Budgets(dead_store, lease_s=0.6)  # never started: it died after reserving
    budget = scope("lease", 1_000)
    kept, lost = new_id(), new_id()
    assert (await live.reserve(kept, [budget], 300)).admitted
    assert (await dead.reserve(lost, [budget], 500)).admitted
    live.start()
    try:

        async def swept() -> bool:
            assert await period_state(store_url, budget.name, 0) == (0, 300)
            return True

        started = time.monotonic()
        await eventually_async(swept, 5)
        assert time.monotonic() - started < 0.6 + 0.5  # within the lease (+ a sweep, slack)
        await asyncio.sleep(1.0)  # more than a lease: renewed, the live hold stays
        assert await period_state(store_url, budget.name, 0) == (0, 300)
        live.release(kept)  # its record is queued (here: lost), so it is no longer renewed

        async def released() -> bool:
            assert await open_holds(store_url) == 0
            return True

        await eventually_async(released, 5)
        assert await period_state(store_url, budget.name, 0) == (0, 0)
    finally:
        await live.aclose()


@pytest.fixture
async def proxied_store(proxy: TcpProxy, proxied_pg: tuple[str, str]) -> AsyncIterator[Store]:
    store = await opened(proxied_pg[1])
    yield store
    proxy.restore()
    await store.aclose()


async def test_while_the_store_is_down_admission_uses_the_last_state_seen(
    proxy: TcpProxy, proxied_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    written = asyncio.Event()  # the usage batcher, here: records written when it is set

    async def flushed() -> None:
        await written.wait()

    budgets = Budgets(proxied_store, flushed=flushed, retry_after_s=0.2)
    seen, never = scope("seen", 1_000), scope("never", 1_000)
    first = await budgets.reserve(new_id(), [seen], 300)
    assert first.admitted
    assert first.states[0].reserved_nanos == 300
    day = 86_400_000_000
    yesterday = scope("daily", 1_000, start_us=day * 20_000)
    today = scope("daily", 1_000, start_us=day * 20_001)
    assert (await budgets.reserve(new_id(), [yesterday], 800)).admitted
    with caplog.at_level(logging.WARNING, logger="tandem.budgets"):
        proxy.cut()
        holds = [new_id() for _ in range(3)]
        offline = [(await budgets.reserve(hold, [seen], 300)) for hold in holds]
        assert [r.admitted for r in offline] == [True, True, False]  # 300 + 600 fit; 1,200 not
        assert [r.states[0].remaining_nanos for r in offline] == [400, 100, 100]
        holds.append(new_id())
        assert (await budgets.reserve(holds[-1], [seen], 100)).admitted  # exactly the rest
        with pytest.raises(UnavailableError):
            await budgets.reserve(new_id(), [never], 1)  # cannot be checked at all
        with pytest.raises(UnavailableError):
            await budgets.reserve(new_id(), [seen, never], 0)  # all or nothing, refused
        # a period begun since the store went away starts clean; the old one is as seen
        assert not (await budgets.reserve(new_id(), [yesterday], 300)).admitted
        assert (await budgets.reserve(new_id(), [today], 900)).admitted
        assert caplog.text.count("usage store failed") == 1
        proxy.restore()
        await asyncio.sleep(0.25)  # past retry_after_s: the store is asked again
        for hold in holds:
            budgets.release(hold)  # the calls ended: their records are queued, not written
        # the store knows only the 300 reserved before; this replica's 700 since still count
        back = await budgets.reserve(new_id(), [seen], 1)
        assert not back.admitted
        assert back.states[0].remaining_nanos == 0
        assert caplog.text.count("answers again") == 1
        written.set()  # the records of the offline holds are written: the store knows them
        await asyncio.sleep(0.01)
        assert budgets._unwritten == {("key:daily:daily", today.start_us): 900}  # not released
        assert (await budgets.reserve(new_id(), [seen], 700)).admitted  # (not written here)
    await budgets.aclose()


class SlowStore:
    """A store whose reserves take `delay_s` (queued behind other replicas' on a busy
    host), or never end while `hung` is set."""

    def __init__(self, store: Store, delay_s: float = 0.0, answer_after_s: float = 0.0) -> None:
        self._store = store
        self.delay_s = delay_s
        self.answer_after_s = answer_after_s  # reserved in the store, the answer late
        self.hung = asyncio.Event()
        self.asked = 0
        self.read = 0

    async def reserve_budget(
        self, hold_id: str, scopes: Sequence[BudgetScope], nanos: int, lease_s: float
    ) -> Reservation:
        self.asked += 1
        if self.hung.is_set():
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay_s)
        found = await self._store.reserve_budget(hold_id, scopes, nanos, lease_s)
        await asyncio.sleep(self.answer_after_s)
        return found

    async def budget_states(self, scopes: Sequence[BudgetScope]) -> tuple[ScopeState, ...]:
        self.read += 1
        if self.hung.is_set():
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay_s)
        return await self._store.budget_states(scopes)

    async def renew_holds(self, hold_ids: Sequence[str], lease_s: float) -> None:
        await self._store.renew_holds(hold_ids, lease_s)

    async def release_expired_holds(self) -> int:
        return await self._store.release_expired_holds()

    async def release_hold(self, hold_id: str, periods: Sequence[tuple[str, int]]) -> None:
        await self._store.release_hold(hold_id, periods)


async def test_a_reserve_whose_caller_went_away_frees_its_hold_at_once(store_url: str) -> None:
    store = await opened(store_url)
    late = SlowStore(store, answer_after_s=5.0)
    budgets = Budgets(late)  # a 30 s lease: never what frees it here
    budget = scope("gone", 1_000)
    call = asyncio.create_task(budgets.reserve(new_id(), [budget], 300))
    await asyncio.sleep(0.3)  # reserved in the store, the answer not back yet
    assert await period_state(store_url, budget.name, 0) == (0, 300)
    call.cancel()  # the caller went away (a cancelled request): no record will come
    with pytest.raises(asyncio.CancelledError):
        await call

    async def freed() -> bool:
        assert await period_state(store_url, budget.name, 0) == (0, 0)
        return True

    await eventually_async(freed, 2)
    assert await open_holds(store_url) == 0
    await budgets.aclose()
    await store.aclose()


async def test_a_hold_freed_before_its_reserve_lands_is_never_reserved(store_url: str) -> None:
    store = await opened(store_url)
    budget = scope("early", 1_000)
    hold = new_id()
    await store.release_hold(hold, [(budget.name, 0)])  # the reserve's caller gave up first
    with pytest.raises(Exception):  # noqa: B017, PT011 (SQLite's or asyncpg's key violation)
        await store.reserve_budget(hold, [budget], 300, 30)
    assert await period_state(store_url, budget.name, 0) in (None, (0, 0))
    assert await open_holds(store_url) == 0
    assert (await store.reserve_budget(new_id(), [budget], 1_000, 30)).admitted  # all of it
    await store.aclose()


async def test_a_slow_store_is_waited_for_not_taken_for_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await opened(f"sqlite:///{tmp_path / 'usage.db'}")
    slow = SlowStore(store, delay_s=0.6)  # past the quarter second once given
    budgets = Budgets(slow)
    budget = scope("slow", 1_000)
    with caplog.at_level(logging.WARNING, logger="tandem.budgets"):
        holds = [new_id() for _ in range(4)]
        found = await asyncio.gather(*(budgets.reserve(h, [budget], 300) for h in holds))
    # the store's answer, never a guess: a scope never seen was not refused with 503, and
    # exactly what fits was admitted (offline, each would have admitted its own 300)
    assert sorted(r.admitted for r in found) == [False, True, True, True]
    assert "usage store failed" not in caplog.text
    assert budgets._held == {h for h, r in zip(holds, found, strict=True) if r.admitted}
    assert await period_state(f"sqlite:///{tmp_path / 'usage.db'}", budget.name, 0) == (0, 900)
    await store.aclose()


async def test_while_the_store_hangs_one_reserve_at_a_time_asks_it(tmp_path: Path) -> None:
    store = await opened(f"sqlite:///{tmp_path / 'usage.db'}")
    hanging = SlowStore(store)
    budgets = Budgets(hanging, timeout_s=0.3, retry_after_s=0.05)
    budget = scope("probe", 10_000)
    assert (await budgets.reserve(new_id(), [budget], 100)).admitted  # seen
    hanging.hung.set()
    assert (await budgets.reserve(new_id(), [budget], 100)).admitted  # waited 0.3 s: offline
    await asyncio.sleep(0.1)  # past retry_after_s: the store is asked again, by one call
    probe = asyncio.create_task(budgets.reserve(new_id(), [budget], 100))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    others = [await budgets.reserve(new_id(), [budget], 100) for _ in range(3)]
    assert time.monotonic() - started < 0.1  # not waiting on the hung store
    assert all(r.admitted for r in others)
    assert hanging.asked == 3  # the first, the one that timed out, the probe
    assert (await probe).admitted  # timed out too: offline
    await store.aclose()


async def test_a_store_that_hangs_past_the_timeout_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "usage.db"
    store = await opened(f"sqlite:///{path}")
    budgets = Budgets(store, timeout_s=0.25)
    budget = scope("hang", 1_000)
    first = new_id()
    assert (await budgets.reserve(first, [budget], 100)).admitted
    locker = sqlite3.connect(path, isolation_level=None)  # another process's writer
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with caplog.at_level(logging.WARNING, logger="tandem.budgets"):
            started = time.monotonic()
            late = new_id()
            found = await budgets.reserve(late, [budget], 200)
            assert time.monotonic() - started < 0.5
            assert found.admitted
            assert found.states[0].reserved_nanos == 300
            assert "failed while reserving (TimeoutError)" in caplog.text
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # the timed-out call ran once the lock went, and its hold was freed at once: the call
    # counts offline here, once (it used to count in the store too, until swept)

    async def landed() -> bool:
        with sqlite3.connect(path) as db:  # the late reserve ran, and its hold was freed
            held = db.execute("SELECT released FROM budget_holds WHERE id = ?", (late,)).fetchall()
        assert held == [(1,)]
        assert await period_state(f"sqlite:///{path}", budget.name, 0) == (0, 100)
        return True

    await eventually_async(landed, 5)
    assert await open_holds(f"sqlite:///{path}") == 1
    assert budgets._held == {first}
    await budgets.aclose()
    await store.aclose()


async def test_a_read_is_answered_from_a_recent_view_else_from_the_store(store_url: str) -> None:
    store = await opened(store_url)
    counted = SlowStore(store)
    budgets = Budgets(counted, fresh_s=0.3)
    budget = scope("reads", 1_000)
    assert (await budgets.reserve(new_id(), [budget], 300)).admitted
    other = await store.reserve_budget(new_id(), [budget], 200, 30)  # another replica's
    assert other.admitted
    read = await budgets.states([budget])  # seen just now: no trip, the other's unseen
    assert read is not None
    assert [(s.spent_nanos, s.reserved_nanos) for s in read] == [(0, 300)]
    assert counted.read == 0
    await asyncio.sleep(0.35)  # past fresh_s: the store says
    read = await budgets.states([budget])
    assert read is not None
    assert [(s.spent_nanos, s.reserved_nanos, s.remaining_nanos) for s in read] == [(0, 500, 500)]
    assert counted.read == 1
    assert await budgets.states([budget]) == read  # and that read is fresh in turn
    assert counted.read == 1
    never = scope("read-only", 1_000)  # no row: read, not made
    read = await budgets.states([never])
    assert read is not None
    assert [(s.spent_nanos, s.reserved_nanos) for s in read] == [(0, 0)]
    assert await period_state(store_url, never.name, 0) is None
    await asyncio.sleep(0.35)
    counted.delay_s = 0.1
    burst = await asyncio.gather(*(budgets.states([budget, never]) for _ in range(5)))
    assert counted.read == 3  # a burst of reads is one trip
    assert len(set(burst)) == 1
    await budgets.aclose()
    await store.aclose()


async def test_while_the_store_is_down_a_read_is_the_last_state_seen_or_nothing(
    proxy: TcpProxy, proxied_store: Store
) -> None:
    budgets = Budgets(proxied_store, fresh_s=0.0, retry_after_s=30)
    seen, read_only, never = scope("seen", 1_000), scope("read", 1_000), scope("never", 1_000)
    assert (await budgets.reserve(new_id(), [seen], 300)).admitted
    assert await budgets.states([read_only]) is not None  # a read counts as seen too
    proxy.cut()
    offline = new_id()
    assert (await budgets.reserve(offline, [seen], 200)).admitted  # offline, counted here
    read = await budgets.states([seen, read_only])
    assert read is not None
    assert [(s.spent_nanos, s.reserved_nanos) for s in read] == [(0, 500), (0, 0)]
    assert await budgets.states([never]) is None  # no headers, and no 503
    assert await budgets.states([seen, never]) is None
    await budgets.aclose()


async def test_a_read_does_not_wait_on_a_hung_store_nor_take_it_for_down(tmp_path: Path) -> None:
    store = await opened(f"sqlite:///{tmp_path / 'usage.db'}")
    hanging = SlowStore(store)
    budgets = Budgets(hanging, fresh_s=0.0, read_timeout_s=0.2)
    budget = scope("hung-read", 1_000)
    assert (await budgets.reserve(new_id(), [budget], 100)).admitted
    hanging.hung.set()
    started = time.monotonic()
    read = await budgets.states([budget])
    assert time.monotonic() - started < 0.5
    assert read is not None
    assert read[0].reserved_nanos == 100  # as last seen
    assert await budgets.states([scope("hung-never", 1_000)]) is None
    hanging.hung.clear()
    assert (await budgets.reserve(new_id(), [budget], 100)).admitted
    assert hanging.asked == 2  # the store was asked: a slow read did not make it "down"
    await budgets.aclose()
    await store.aclose()
