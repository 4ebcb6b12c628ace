"""The API key cache: made-up keys cost the store (SQLite, PostgreSQL) at most one
read of the new key ids per `auth.key_cache_s`, however many different ones
arrive at once; malformed ones nothing; and what it remembers is bounded.
Queries are read from `tandem_key_store_lookups_total`, which counts every
query the cache sends to the store."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from tests.eventually import eventually
from tests.servers import TandemProcess, run_cli

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


def made_up(count: int) -> list[str]:
    """`count` different well-formed ids that no store holds (ours are random)."""
    return [f"tdm_{n:012x}_not-a-secret" for n in range(count)]


def keys_cli(store_url: str, directory: Path, *args: str) -> bytes:
    """`tandem keys ...` in a process of its own, as an operator runs it."""
    config = directory / "keys.yaml"
    config.write_text(CONFIG % {"ttl": 1, "store": store_url})
    done = run_cli("keys", *args, "--config", config, cwd=directory)
    assert done.returncode == 0, done.stderr
    return done.stdout.encode()


def poll_status(server: TandemProcess, key: str, status: int) -> float:
    """Seconds until a request with `key` answers `status` (polled)."""
    started = time.monotonic()
    eventually(
        lambda: asyncio.run(statuses(server, [key], at_once=1)) == [status],
        DEADLINE_S,
        what=f"the answer {status}",
    )
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
