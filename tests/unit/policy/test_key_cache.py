"""The API key cache in process, over a real SQLite store that counts its queries:
made-up ids share one read of the new ids per TTL, a store that is down costs only
the ids it never saw, and what the cache remembers is bounded (the same over a real
server: tests/test_key_cache.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.errors import UnavailableError
from server.policy.key_cache import KeyCache
from server.store import open_store
from server.store.keys import new_key


def remembered(cache: KeyCache) -> tuple[int, int, int | None]:
    """(real keys, unknown ids, the store's ids or None past max_ids) the cache holds."""
    ids = cache._ids
    return len(cache._keys), len(cache._unknown), None if ids is None else len(ids)


class CountingStore:
    """A real SQLite store that counts the key queries it answers: they wait for
    `gate`, and fail while `down`."""

    def __init__(self, path: Path) -> None:
        store = open_store(f"sqlite:///{path}")
        assert store is not None
        self.store = store
        self.lookups = 0  # of one id
        self.reads = 0  # of the ids created since
        self.down = False
        self.asked = asyncio.Event()  # set by a query
        self.gate = asyncio.Event()  # queries answer once it is set
        self.gate.set()

    async def _asked(self) -> None:
        self.asked.set()
        await self.gate.wait()
        if self.down:
            raise ConnectionError("the store is down")

    async def find_key(self, key_id: str) -> object:
        self.lookups += 1
        await self._asked()
        return await self.store.find_key(key_id)

    async def key_ids_since(self, created_at: float) -> list[str]:
        self.reads += 1
        await self._asked()
        return await self.store.key_ids_since(created_at)


@pytest.fixture
async def counting(tmp_path: Path) -> AsyncIterator[CountingStore]:
    """A real SQLite store that counts the queries it answers, open for one test."""
    store = CountingStore(tmp_path / "keys.db")
    await store.store.open()
    yield store
    await store.store.aclose()


class Clock:
    """Both clocks of a KeyCache, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0
        self.wall = 1_000_000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


async def test_made_up_ids_share_one_read_of_new_ids_per_ttl_and_none_is_asked_alone(
    counting: CountingStore,
) -> None:
    clock = Clock()
    cache = KeyCache(counting, 1.0, clock=lambda: clock.now)  # type: ignore[arg-type]
    await cache.load()
    clock.advance(0.5)
    for n in range(100):
        assert await cache.lookup(f"{n:012x}") is None
    assert (counting.reads, counting.lookups) == (1, 0)  # the set is younger than the TTL

    clock.advance(1.0)
    counting.gate.clear()
    counting.asked.clear()
    callers = [asyncio.ensure_future(cache.lookup(f"{n:012x}")) for n in range(100, 200)]
    await counting.asked.wait()  # the first caller's read has reached the store
    callers[0].cancel()  # its client went away: the others still get the read
    counting.gate.set()
    assert await asyncio.gather(*callers[1:]) == [None] * 99
    assert callers[0].cancelled()
    assert (counting.reads, counting.lookups) == (2, 0)


async def test_a_key_stamped_by_a_clock_behind_ours_is_still_read(counting: CountingStore) -> None:
    clock = Clock()
    cache = KeyCache(
        counting,  # type: ignore[arg-type]
        1.0,
        clock=lambda: clock.now,
        wall_clock=lambda: clock.wall,
    )
    await cache.load()
    _, record = new_key("alice", "free")  # on a replica whose clock is 30 s behind ours
    record = dataclasses.replace(record, created_at=clock.wall - 30)
    await counting.store.create_key(record)
    clock.advance(1.0)
    assert await cache.lookup(record.id) == record


async def test_while_the_store_is_down_a_new_id_is_unavailable_and_a_cached_key_works(
    counting: CountingStore,
) -> None:
    clock = Clock()
    cache = KeyCache(counting, 1.0, clock=lambda: clock.now)  # type: ignore[arg-type]
    _, cached = new_key("alice", "free")
    await counting.store.create_key(cached)
    await cache.load()
    assert await cache.lookup(cached.id) == cached
    _, new = new_key("bob", "free")
    await counting.store.create_key(new)

    clock.advance(2.0)  # both the key and the set are older than the TTL
    counting.down = True
    assert await cache.lookup(cached.id) == cached  # what we knew beats refusing all
    for key_id in (new.id, "0123456789ab"):  # the stale set cannot tell: 503, not 401
        with pytest.raises(UnavailableError):
            await cache.lookup(key_id)
    asked = counting.lookups + counting.reads
    for _ in range(100):  # a key served from the cache is asked again a TTL later
        assert await cache.lookup(cached.id) == cached
    assert counting.lookups + counting.reads == asked
    counting.down = False
    assert await cache.lookup(new.id) == new  # as soon as the store is back
    assert await cache.lookup("0123456789ab") is None


async def test_made_up_ids_past_the_bound_of_ids_are_remembered_in_bounded_memory(
    counting: CountingStore,
) -> None:
    records = [new_key(user, "free")[1] for user in ("alice", "bob", "carol")]
    for record in records:
        await counting.store.create_key(record)
    cache = KeyCache(counting, 60, max_unknown=100, max_ids=2)  # type: ignore[arg-type]
    await cache.load()  # 3 ids: past the bound, the set is dropped
    assert remembered(cache) == (0, 0, None)
    record = records[0]
    assert await cache.lookup(record.id) == record
    for n in range(1000):  # so ids are asked one by one again, and remembered
        assert await cache.lookup(f"{n:012x}") is None
    assert counting.lookups == 1001
    assert remembered(cache) == (1, 100, None)  # (keys, made-up ids): the newest 100
    assert await cache.lookup(record.id) == record  # still cached: no lookup
    assert await cache.lookup(f"{999:012x}") is None
    assert counting.lookups == 1001


async def test_callers_of_one_id_share_its_lookup_and_one_going_away_cancels_it_for_none(
    counting: CountingStore,
) -> None:
    _, record = new_key("alice", "free")
    await counting.store.create_key(record)
    cache = KeyCache(counting, 60)  # type: ignore[arg-type]
    await cache.load()
    counting.gate.clear()
    counting.asked.clear()
    callers = [asyncio.ensure_future(cache.lookup(record.id)) for _ in range(10)]
    await counting.asked.wait()  # the first caller's lookup has reached the store
    callers[0].cancel()  # its client went away
    counting.gate.set()
    answers = await asyncio.gather(*callers[1:])
    assert answers == [record] * 9
    assert callers[0].cancelled()
    assert counting.lookups == 1
