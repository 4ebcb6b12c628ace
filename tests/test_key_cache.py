"""The API key cache: made-up keys cost the store (SQLite, PostgreSQL) at most one
lookup per id per `auth.key_cache_s`, however many arrive at once, and what it
remembers is bounded. Lookups are read from `tandem_key_store_lookups_total`,
which counts every query the cache sends to the store."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx

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


def test_a_flood_of_one_made_up_key_reaches_the_store_once(
    tandem: Callable[..., TandemProcess], store_url: str
) -> None:
    ttl_s = 60
    server = tandem(CONFIG % {"ttl": ttl_s, "store": store_url})
    started = time.monotonic()
    answers = asyncio.run(statuses(server, [MADE_UP] * 1000, at_once=100))
    elapsed = time.monotonic() - started
    assert answers == [401] * 1000
    lookups = store_lookups(server)
    assert set(lookups) == {"unknown"}
    # one per key_cache_s, however many asked at once (the run takes far less than one)
    assert lookups["unknown"] <= 1 + elapsed // ttl_s


def test_a_key_made_after_its_id_was_refused_works_within_key_cache_s(
    tandem: Callable[..., TandemProcess], store_url: str
) -> None:
    ttl_s = 1.0
    server = tandem(CONFIG % {"ttl": ttl_s, "store": store_url})
    key, record = new_key("alice", "free")
    assert asyncio.run(statuses(server, [key] * 20, at_once=10)) == [401] * 20

    async def create() -> None:
        store = open_store(store_url)
        assert store is not None
        await store.open()
        try:
            await store.create_key(record)
        finally:
            await store.aclose()

    asyncio.run(create())
    created = time.monotonic()
    while asyncio.run(statuses(server, [key], at_once=1)) != [200]:
        assert time.monotonic() - created < DEADLINE_S, "the new key is still refused"
        time.sleep(0.05)
    assert time.monotonic() - created < ttl_s + 1.0  # 1 s for the requests themselves
    assert store_lookups(server)["found"] == 1


class CountingStore:
    """A real SQLite store that counts the key lookups it answers."""

    def __init__(self, path: Path) -> None:
        store = open_store(f"sqlite:///{path}")
        assert store is not None
        self.store = store
        self.lookups = 0
        self.asked = asyncio.Event()  # set by the first lookup
        self.gate = asyncio.Event()  # lookups answer once it is set
        self.gate.set()

    async def find_key(self, key_id: str) -> object:
        self.lookups += 1
        self.asked.set()
        await self.gate.wait()
        return await self.store.find_key(key_id)


async def test_made_up_ids_are_remembered_in_bounded_memory_and_never_evict_real_keys(
    tmp_path: Path,
) -> None:
    counting = CountingStore(tmp_path / "keys.db")
    await counting.store.open()
    try:
        _, record = new_key("alice", "free")
        await counting.store.create_key(record)
        cache = KeyCache(counting, 60, max_unknown=100)  # type: ignore[arg-type]
        assert await cache.lookup(record.id) == record
        for n in range(1000):
            assert await cache.lookup(f"{n:012x}") is None
        assert counting.lookups == 1001
        assert cache.remembered() == (1, 100)  # (keys, made-up ids): the newest 100
        assert await cache.lookup(record.id) == record  # still cached: no lookup
        assert await cache.lookup(f"{999:012x}") is None
        assert counting.lookups == 1001
    finally:
        await counting.store.aclose()


async def test_callers_of_one_id_share_its_lookup_and_one_going_away_cancels_it_for_none(
    tmp_path: Path,
) -> None:
    counting = CountingStore(tmp_path / "keys.db")
    await counting.store.open()
    try:
        _, record = new_key("alice", "free")
        await counting.store.create_key(record)
        cache = KeyCache(counting, 60)  # type: ignore[arg-type]
        counting.gate.clear()
        callers = [asyncio.ensure_future(cache.lookup(record.id)) for _ in range(10)]
        await counting.asked.wait()  # the first caller's lookup has reached the store
        callers[0].cancel()  # its client went away
        counting.gate.set()
        answers = await asyncio.gather(*callers[1:])
        assert answers == [record] * 9
        assert callers[0].cancelled()
        assert counting.lookups == 1
    finally:
        await counting.store.aclose()
