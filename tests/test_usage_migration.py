"""A usage store made by an earlier version gains the new columns and tables at start, and
keeps its rows (records from before money cost 0, `unpriced`; keys from before have no
limits), idempotently, even when replicas open it together; a store a newer version made
is refused in one line."""

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
import orjson
import pytest

from server.store import Store, open_store
from server.store.keys import hash_key
from server.store.keys_sql import KeyPage
from server.store.ledger_sql import usage_schema
from server.store.versions import SCHEMA_VERSION
from server.usage.record import UsageQuery
from tests.servers import TandemProcess, run_serve, usage_records
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
# The store as f871340 made it, the last before money: the ledger with every column but
# cost_nanos, cost_source, key_id and tier; API keys as first made, one of them carol's;
# no tandem_schema. (DOUBLE PRECISION is REAL to SQLite.)
BEFORE_MONEY_COLUMNS = (
    PREVIOUS_COLUMNS
    + "ALTER TABLE usage_records ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;\n"
)
OLD_KEY_ID = "0123456789ab"
OLD_KEY = f"tdm_{OLD_KEY_ID}_a-key-made-before-money"
OLD_KEYS = f"""
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    "user" TEXT NOT NULL,
    tier TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE INDEX api_keys_by_time ON api_keys (created_at);
INSERT INTO api_keys VALUES ('{OLD_KEY_ID}', '{hash_key(OLD_KEY)}', 'carol', 'free', 1.7e9, NULL);
"""
# a row as that version wrote it: 3 of its 12 prompt tokens written to a cache
BEFORE_MONEY_ROW = ("bm-alice", "r4", "alice", "echo", "demo", "anthropic", 12, 6, "ok", 2.0, None)
BEFORE_MONEY_ROW_TAIL = ("upstream", "user", 2, 1, 3)  # ..., reasoning, cache_write_tokens
OLD = ("", [(*row, OLD_TIME_US) for row in OLD_ROWS])
PREVIOUS = (PREVIOUS_COLUMNS, [(*PREVIOUS_ROW, OLD_TIME_US, *PREVIOUS_ROW_TAIL)])
BEFORE_MONEY = (
    BEFORE_MONEY_COLUMNS + OLD_KEYS,
    [(*BEFORE_MONEY_ROW, OLD_TIME_US, *BEFORE_MONEY_ROW_TAIL)],
)
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
def before_money_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from made_store(request.param, tmp_path / "before-money.db", BEFORE_MONEY)


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


async def schema_of(url: str) -> dict[str, set[str]]:
    """What a store holds, by table: its columns; and its indexes (under "indexes") and
    functions (under "functions"), each by name."""
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            names = db.execute("SELECT type, name FROM sqlite_master WHERE sql IS NOT NULL")
            schema: dict[str, set[str]] = {"indexes": set(), "functions": set()}
            for kind, name in names.fetchall():
                if kind == "index":
                    schema["indexes"].add(name)
                elif kind == "table":
                    schema[name] = {row[1] for row in db.execute(f'PRAGMA table_info("{name}")')}
            return schema
        finally:
            db.close()
    name = url.rpartition("search_path=")[2]
    connection = await asyncpg.connect(url.partition("?")[0])
    try:
        columns = await connection.fetch(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = $1",
            name,
        )
        schema = {"indexes": set(), "functions": set()}
        for table, column in columns:
            schema.setdefault(table, set()).add(column)
        for row in await connection.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND indexname NOT LIKE '%_pkey'",
            name,
        ):
            schema["indexes"].add(row[0])
        for row in await connection.fetch(
            "SELECT routine_name FROM information_schema.routines WHERE routine_schema = $1", name
        ):
            schema["functions"].add(row[0])
        return schema
    finally:
        await connection.close()


async def versions_of(url: str) -> list[int]:
    """The rows of `tandem_schema`."""
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return [row[0] for row in db.execute("SELECT version FROM tandem_schema")]
        finally:
            db.close()
    connection = await asyncpg.connect(url.partition("?")[0])
    try:
        table = f'"{url.rpartition("search_path=")[2]}".tandem_schema'
        return [row[0] for row in await connection.fetch(f"SELECT version FROM {table}")]
    finally:
        await connection.close()


def fresh_schema(kind: str, path: Path) -> dict[str, set[str]]:
    """What this version makes of an empty database."""

    async def made(url: str) -> dict[str, set[str]]:
        store = open_store(url)
        assert store is not None
        await store.open()
        await store.aclose()
        return await schema_of(url)

    if kind == "sqlite":
        return asyncio.run(made(f"sqlite:///{path}"))
    with pg_schema_url() as url:
        return asyncio.run(made(url))


def test_a_store_from_before_money_gains_costs_key_limits_and_its_version(
    tandem: Callable[..., TandemProcess], before_money_store: str, tmp_path: Path
) -> None:
    """Started twice, then again: the store is the one this version makes of an empty
    database, its rows kept; records from before cost 0, `unpriced`; its key still calls,
    with no limits of its own and no labels."""
    start_twice_with_a_chat(tandem, before_money_store)

    gateway = tandem(CONFIG % {"store": before_money_store})
    with httpx.Client(base_url=gateway.base_url) as http:
        records = http.get("/native/v1/usage", headers=bearer(ADMIN_KEY)).json()["records"]
        called = http.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "still here"}]},
            headers=bearer(OLD_KEY),
        )
        assert called.is_success, called.text
    assert len(records) == 3
    assert {(r["cost_nanos"], r["cost_usd"], r["cost_source"]) for r in records} == {
        (0, 0, "unpriced")
    }
    old = next(r for r in records if r["request_id"] == "r4")
    assert (old["prompt_tokens"], old["cached_tokens"], old["cache_write_tokens"]) == (12, 2, 3)
    usage_records(gateway, 1, OLD_KEY)  # carol's call, written
    assert gateway.terminate() == 0, gateway.stderr()

    async def read(url: str) -> tuple[list[Any], list[Any], list[Any]]:
        store = open_store(url)
        assert store is not None
        try:
            keys = await store.list_keys_page(KeyPage())
            before = await store.query_usage(UsageQuery(user="alice"))
            carols = await store.query_usage(UsageQuery(user="carol"))
            return keys, before.records, carols.records
        finally:
            await store.aclose()

    keys, alices, carols = asyncio.run(read(before_money_store))
    [key] = keys
    assert (key.id, key.user, key.tier, key.revoked) == (OLD_KEY_ID, "carol", "free", False)
    assert (key.models, key.requests_per_minute, key.tokens_per_minute) == (None, None, None)
    assert (key.max_concurrent_requests, key.budget_nanos, key.budget_period) == (None, None, None)
    assert (key.expires_at, key.labels) == (None, {})
    old_record = next(r for r in alices if r.request_id == "r4")
    assert (old_record.cost_nanos, old_record.cost_source) == (0, "unpriced")
    assert (old_record.key_id, old_record.tier) == (None, "")  # unknown before money
    [carol] = carols
    assert (carol.key_id, carol.tier, carol.caller_kind) == (OLD_KEY_ID, "free", "user")

    kind = "sqlite" if before_money_store.startswith("sqlite") else "postgresql"
    assert asyncio.run(schema_of(before_money_store)) == fresh_schema(kind, tmp_path / "new.db")
    assert asyncio.run(versions_of(before_money_store)) == [SCHEMA_VERSION]


def test_replicas_opening_a_store_from_before_money_together_agree(tmp_path: Path) -> None:
    """Three stores opening it at once: one version row, every table and column, and what
    one writes the others read whole, costs and keys alike."""
    from server.store.postgres import PostgresStore
    from server.store.sqlite import SqliteStore
    from server.usage.record import UsageRecord

    row = ("new-2", "r10", "dave", "echo", "demo", "openai", 30, 7, "ok", 1.0, None)
    record = UsageRecord(
        *row, OLD_TIME_US + 2, cost_nanos=8_050_001, cost_source="priced", key_id="k", tier="t"
    )

    fresh = {kind: fresh_schema(kind, tmp_path / "fresh.db") for kind in ("sqlite", "postgresql")}

    async def open_three(stores: list[Store], url: str) -> None:
        try:
            await asyncio.gather(*(store.open() for store in stores))
            await stores[0].write_usage([record])
            page = await stores[1].query_usage(UsageQuery(user="dave"))
            assert page.records == [record]
            assert page.totals.cost_nanos == 8_050_001
            [key] = await stores[2].list_keys_page(KeyPage())
            assert (key.id, key.models, key.budget_nanos, key.labels) == (
                OLD_KEY_ID,
                None,
                None,
                {},
            )
        finally:
            await asyncio.gather(*(store.aclose() for store in stores))
        assert await versions_of(url) == [SCHEMA_VERSION]
        assert await schema_of(url) == fresh["sqlite" if url.startswith("sqlite") else "postgresql"]

    for round_ in range(3):
        path = tmp_path / f"together-{round_}.db"
        url = make_sqlite(path, BEFORE_MONEY)
        asyncio.run(open_three([SqliteStore(str(path)) for _ in range(3)], url))
        with pg_schema_url() as url:
            make_postgres(url, BEFORE_MONEY)
            asyncio.run(open_three([PostgresStore(url) for _ in range(3)], url))


def test_a_replica_refuses_a_store_whose_schema_is_newer_in_one_line(
    before_money_store: str, tmp_path: Path
) -> None:
    """A store a newer Tandem has touched (its version above ours) is left as it is: the
    start fails with one error line naming usage.store, not a traceback."""

    async def newer(url: str) -> None:
        if url.startswith("sqlite:///"):
            with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
                db.executescript(
                    "CREATE TABLE tandem_schema (version INTEGER NOT NULL);"
                    f"INSERT INTO tandem_schema VALUES ({SCHEMA_VERSION + 1});"
                )
            return
        connection = await asyncpg.connect(url.partition("?")[0])
        try:
            await connection.execute(f'SET search_path = "{url.rpartition("search_path=")[2]}"')
            await connection.execute(
                "CREATE TABLE tandem_schema (version INTEGER NOT NULL);"
                f"INSERT INTO tandem_schema VALUES ({SCHEMA_VERSION + 1});"
            )
        finally:
            await connection.close()

    asyncio.run(newer(before_money_store))
    before = asyncio.run(schema_of(before_money_store))

    result = run_serve(tmp_path, CONFIG % {"store": before_money_store})
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = [orjson.loads(line) for line in result.stderr.splitlines()]
    [error] = [line for line in lines if line["level"] != "info"]
    assert error["level"] == "error"
    assert error["message"] == (
        f"tandem: usage.store: the store's schema is version {SCHEMA_VERSION + 1}, newer "
        f"than this Tandem knows ({SCHEMA_VERSION}); upgrade Tandem before serving from it"
    )
    # nothing was added to it, nor its version lowered
    assert asyncio.run(schema_of(before_money_store))["usage_records"] == before["usage_records"]
    assert asyncio.run(schema_of(before_money_store))["api_keys"] == before["api_keys"]
    assert asyncio.run(versions_of(before_money_store)) == [SCHEMA_VERSION + 1]
