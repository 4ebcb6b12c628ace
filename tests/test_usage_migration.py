"""A usage store made by an earlier version gains the new columns at start, and keeps its rows,
idempotently, even when replicas open it together."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest

from server.store.ledger_sql import usage_schema
from tests.servers import TandemProcess
from tests.stores import pg_schema_url

# The ledger exactly as version 7ed583c made it: `usage_schema` is the table as first made
# (columns added since are ADDED_COLUMNS), held to that version's text by its digest.
OLD_LEDGER_SHA256 = "9051e41cc2e61cf94e0cd26c2fd8e8044f26d0be5044c4da0be0d10939b84aea"
SQLITE_TYPES = {"real": "REAL", "time": "INTEGER"}
POSTGRES_TYPES = {"real": "DOUBLE PRECISION", "time": "TIMESTAMPTZ"}
# two rows as that version wrote them: an admin-key call and a JWT user's
OLD_ROWS = [
    ("old-admin", "r1", "admin", "echo", "demo", "openai", 2, 2, "ok", 1.5, None),
    ("old-alice", "r2", "alice", "echo", "demo", "native", 3, 3, "ok", 2.5, 1.0),
]
OLD_TIME_US = 1_700_000_000_000_000

# The ledger as version b6ec649 made it: the first one's, and the columns added since then
# (usage_source, caller_kind, cached_tokens, reasoning_tokens), all but cache_write_tokens.
PREVIOUS_COLUMNS = """
ALTER TABLE usage_records ADD COLUMN usage_source TEXT NOT NULL DEFAULT 'upstream';
ALTER TABLE usage_records ADD COLUMN caller_kind TEXT NOT NULL DEFAULT 'user';
ALTER TABLE usage_records ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
"""
# a row as that version wrote it: a JWT user's call that read 3 prompt tokens from a cache
PREVIOUS_ROW = ("prev-alice", "r3", "alice", "echo", "demo", "anthropic", 9, 4, "ok", 3.5, None)
PREVIOUS_ROW_TAIL = ("upstream", "user", 3, 1)  # usage_source, caller_kind, cached, reasoning
OLD = ("", [(*row, OLD_TIME_US) for row in OLD_ROWS])
PREVIOUS = (PREVIOUS_COLUMNS, [(*PREVIOUS_ROW, OLD_TIME_US, *PREVIOUS_ROW_TAIL)])
Ledger = tuple[str, list[tuple[Any, ...]]]  # the columns added to the first table, its rows

SECRET = "m" * 40
ADMIN_KEY = "migration-admin-key-0123456789"
CONFIG = f"""
providers: [{{name: demo, kind: mock}}]
models: [{{name: echo, provider: demo}}]
tiers: {{free: {{default_model: echo}}}}
auth:
  required: true
  jwt: {{secret: "{SECRET}", algorithms: [HS256]}}
  admin_keys: ["{ADMIN_KEY}"]
usage: {{store: "%(store)s", flush_interval_ms: 20}}
"""


def test_the_first_ledger_is_still_the_one_7ed583c_made() -> None:
    schema = usage_schema(real="{real}", time="{time}")
    assert hashlib.sha256(schema.encode()).hexdigest() == OLD_LEDGER_SHA256


def make_sqlite(path: Path, ledger: Ledger) -> str:
    added, rows = ledger
    with sqlite3.connect(path) as db:
        db.executescript(usage_schema(**SQLITE_TYPES) + added)
        marks = ", ".join("?" * len(rows[0]))
        db.executemany(f"INSERT INTO usage_records VALUES ({marks})", rows)
    return f"sqlite:///{path}"


def make_postgres(url: str, ledger: Ledger) -> None:
    added, rows = ledger
    schema = url.rpartition("search_path=")[2]
    marks = [f"${n}" for n in range(1, len(rows[0]) + 1)]
    marks[11] = f"to_timestamp({marks[11]})"  # created_at, in seconds
    in_seconds = [(*row[:11], row[11] / 1e6, *row[12:]) for row in rows]

    async def make() -> None:
        connection = await asyncpg.connect(url.partition("?")[0])
        try:
            await connection.execute(f'CREATE SCHEMA "{schema}"')
            await connection.execute(f'SET search_path = "{schema}"')
            await connection.execute(usage_schema(**POSTGRES_TYPES) + added)
            insert = f"INSERT INTO usage_records VALUES ({', '.join(marks)})"
            await connection.executemany(insert, in_seconds)
        finally:
            await connection.close()

    asyncio.run(make())


def made_store(kind: str, path: Path, ledger: Ledger) -> Iterator[str]:
    if kind == "sqlite":
        yield make_sqlite(path, ledger)
    else:
        with pg_schema_url() as url:
            make_postgres(url, ledger)
            yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def previous_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from made_store(request.param, tmp_path / "previous.db", PREVIOUS)


@pytest.fixture(params=["sqlite", "postgresql"])
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from made_store(request.param, tmp_path / "old.db", OLD)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def as_user(sub: str) -> dict[str, str]:
    claims = {"sub": sub, "exp": int(time.time()) + 600}
    return bearer(jwt.encode(claims, SECRET, algorithm="HS256"))


def start_twice_with_a_chat(tandem: Callable[..., TandemProcess], store: str) -> None:
    """Serve `store` twice, a chat each time: the second start finds nothing left to add."""
    for _ in range(2):
        gateway = tandem(CONFIG % {"store": store})
        with httpx.Client(base_url=gateway.base_url, headers=as_user("alice")) as http:
            assert http.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
            ).is_success
        assert gateway.terminate() == 0, gateway.stderr()


def test_an_old_ledger_gains_the_new_columns_and_keeps_its_rows(
    tandem: Callable[..., TandemProcess], old_store: str
) -> None:
    start_twice_with_a_chat(tandem, old_store)

    gateway = tandem(CONFIG % {"store": old_store})
    with httpx.Client(base_url=gateway.base_url) as http:
        everything = http.get("/native/v1/usage", headers=bearer(ADMIN_KEY)).json()
        records: list[dict[str, Any]] = everything["records"]
        assert {r["request_id"] for r in records if r["request_id"] in ("r1", "r2")} == {"r1", "r2"}
        assert len(records) == 4
        assert {r["usage_source"] for r in records} == {"upstream"}
        old = next(r for r in records if r["request_id"] == "r2")
        assert (old["prompt_tokens"], old["ttft_ms"]) == (3, 1.0)
        assert old["created_at"] == "2023-11-14T22:13:20.000000Z"
        # the old admin-key row is the admin key's, not a JWT user's who says `sub: admin`
        assert http.get("/native/v1/usage", headers=as_user("admin")).json()["records"] == []
        assert len(http.get("/native/v1/usage", headers=as_user("alice")).json()["records"]) == 3


def test_replicas_starting_together_on_an_empty_database_all_open() -> None:
    from server.store.postgres import PostgresStore

    async def start_three(url: str) -> None:
        stores = [PostgresStore(url) for _ in range(3)]
        try:
            await asyncio.gather(*(store.open() for store in stores))
            await asyncio.gather(*(store.ping() for store in stores))
        finally:
            await asyncio.gather(*(store.aclose() for store in stores))

    for _ in range(5):  # without the schema lock, 2 of 3 failed in 10 of 10 rounds
        with pg_schema_url() as url:
            asyncio.run(start_three(url))


def test_a_ledger_of_the_previous_version_gains_cache_write_tokens(
    tandem: Callable[..., TandemProcess], previous_store: str
) -> None:
    start_twice_with_a_chat(tandem, previous_store)

    gateway = tandem(CONFIG % {"store": previous_store})
    with httpx.Client(base_url=gateway.base_url, headers=as_user("alice")) as http:
        records: list[dict[str, Any]] = http.get("/native/v1/usage").json()["records"]
    assert len(records) == 3
    old = next(r for r in records if r["request_id"] == "r3")
    assert (old["prompt_tokens"], old["cached_tokens"], old["reasoning_tokens"]) == (9, 3, 1)
    assert [r["cache_write_tokens"] for r in records] == [0, 0, 0]


def test_replicas_opening_a_previous_ledger_together_all_gain_the_column(tmp_path: Path) -> None:
    """Each store adds what is missing in one locked step: one ALTER, whoever comes first,
    and a record written through one replica reads back whole through another."""
    from server.store.postgres import PostgresStore
    from server.store.sqlite import SqliteStore
    from server.usage.record import UsageQuery, UsageRecord

    # in the ledger's column order, as PREVIOUS_ROW; and the two cache counts
    row = ("new-1", "r9", "bob", "echo", "demo", "anthropic", 18, 2, "ok", 1.0, None)
    record = UsageRecord(*row, OLD_TIME_US + 1, cached_tokens=2, cache_write_tokens=5)

    async def open_three(stores: list[Any]) -> None:
        try:
            await asyncio.gather(*(store.open() for store in stores))
            await stores[0].write_usage([record])
            page = await stores[2].query_usage(UsageQuery(user="bob"))
            assert page.records == [record]
        finally:
            await asyncio.gather(*(store.aclose() for store in stores))

    for round_ in range(3):
        path = make_sqlite(tmp_path / f"together-{round_}.db", PREVIOUS).removeprefix("sqlite:///")
        asyncio.run(open_three([SqliteStore(path) for _ in range(3)]))
        with pg_schema_url() as url:
            make_postgres(url, PREVIOUS)
            asyncio.run(open_three([PostgresStore(url) for _ in range(3)]))
