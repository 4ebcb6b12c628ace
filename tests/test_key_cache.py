"""The API key cache: made-up keys cost the store (SQLite, PostgreSQL) at most one
read of the new key ids per `auth.key_cache_s`, however many different ones
arrive at once; malformed ones nothing; and what it remembers is bounded.
Queries are read from `tandem_key_store_lookups_total`, which counts every
query the cache sends to the store."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import orjson
import pytest

from server.errors import UnavailableError
from server.policy.key_cache import KeyCache
from server.store import open_store
from server.store.keys import new_key
from tests.servers import TandemProcess

CONFIG = """
auth: {required: true, key_cache_s: %(ttl)s}
usage: {store: "%(store)s"}
"""
MADE_UP = "tdm_0123456789ab_not-a-secret"
DEADLINE_S = 30.0  # far past any bound checked here; never a timing assertion


def store_lookups(server: TandemProcess) -> dict[str, float]:
    """`tandem_key_store_lookups_total` by result, from the server's /metrics."""
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    series = re.findall(r'^tandem_key_store_lookups_total\{result="(\w+)"\} (\S+)$', text, re.M)
    return {result: float(value) for result, value in series}


async def statuses(server: TandemProcess, tokens: list[str], *, at_once: int) -> list[int]:
    """GET /v1/models with each token as its credential, `at_once` in flight."""
    limits = httpx.Limits(max_connections=at_once)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(at_once)

        async def one(token: str) -> int:
            async with gate:
                answer = await client.get(
                    "/v1/models", headers={"authorization": f"Bearer {token}"}
                )
                return answer.status_code

        return await asyncio.gather(*(one(token) for token in tokens))


def remembered(cache: KeyCache) -> tuple[int, int, int | None]:
    """(real keys, unknown ids, the store's ids or None past max_ids) the cache holds."""
    ids = cache._ids
    return len(cache._keys), len(cache._unknown), None if ids is None else len(ids)


def made_up(count: int) -> list[str]:
    """`count` different well-formed ids that no store holds (ours are random)."""
    return [f"tdm_{n:012x}_not-a-secret" for n in range(count)]


def keys_cli(store_url: str, directory: Path, *args: str) -> bytes:
    """`tandem keys ...` in a process of its own, as an operator runs it."""
    config = directory / "keys.yaml"
    config.write_text(CONFIG % {"ttl": 1, "store": store_url})
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "keys", *args, "--config", str(config)],
        capture_output=True,
        timeout=60,
        check=True,
        cwd=directory,
    )
    return done.stdout


def poll_status(server: TandemProcess, key: str, status: int) -> float:
    """Seconds until a request with `key` answers `status` (polled)."""
    started = time.monotonic()
    while asyncio.run(statuses(server, [key], at_once=1)) != [status]:
        assert time.monotonic() - started < DEADLINE_S, f"still not {status}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_flood_of_different_made_up_ids_reaches_the_store_once_per_key_cache_s(
    tandem: Callable[..., TandemProcess], store_url: str
) -> None:
    ttl_s = 1.0
    server = tandem(CONFIG % {"ttl": ttl_s, "store": store_url})
    started = time.monotonic()
    answers = asyncio.run(statuses(server, made_up(1000), at_once=100))
    elapsed = time.monotonic() - started
    assert answers == [401] * 1000
    lookups = store_lookups(server)
    assert set(lookups) == {"ids"}  # reads of new ids: no id was asked about alone
    # the read at start, then one per key_cache_s at most, however many asked at once
    assert lookups["ids"] <= 2 + elapsed // ttl_s


def test_a_key_made_after_a_flood_works_and_once_revoked_is_refused_within_key_cache_s(
    tandem: Callable[..., TandemProcess], store_url: str, tmp_path: Path
) -> None:
    ttl_s = 1.0
    server = tandem(CONFIG % {"ttl": ttl_s, "store": store_url})
    started = time.monotonic()
    assert asyncio.run(statuses(server, made_up(300), at_once=50)) == [401] * 300

    created = orjson.loads(keys_cli(store_url, tmp_path, "create", "--user", "alice", "--json"))
    # within key_cache_s plus one read (the request itself): 1 s more for a slow machine
    assert poll_status(server, created["key"], 200) < ttl_s + 1.0
    assert asyncio.run(statuses(server, made_up(300), at_once=50)) == [401] * 300
    keys_cli(store_url, tmp_path, "revoke", created["id"])
    assert poll_status(server, created["key"], 403) < ttl_s + 1.0

    lookups = store_lookups(server)
    assert lookups.get("unknown", 0) == 0
    assert lookups["found"] <= 2 + (time.monotonic() - started) // ttl_s  # the key, per TTL
    assert lookups["ids"] <= 2 + (time.monotonic() - started) // ttl_s


def test_malformed_key_ids_never_reach_the_store(
    tandem: Callable[..., TandemProcess], store_url: str
) -> None:
    # key_cache_s 0: any id that got past its shape would cost a query
    server = tandem(CONFIG % {"ttl": 0, "store": store_url})
    malformed = [
        "tdm_0123456789AB_x",  # ids are lowercase hex
        "tdm_0123456789ag_x",
        "tdm_0123 456789a_x",
        "tdm_+123456789ab_x",
        "tdm_0123456789a._x",
        "tdm_0123456789abc_x",  # 13 characters
        "tdm_0123456789ab_",  # no secret
    ]
    answers = asyncio.run(statuses(server, malformed * 20, at_once=1))
    assert answers == [401] * len(malformed) * 20
    assert store_lookups(server) == {"ids": 1}  # the read at start, nothing since


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
