"""The SQLite store (the default): one file, WAL, every call off the event loop.

One connection, used from one thread of its own: calls never interleave, so a
ledger batch is one transaction (what aiosqlite does, without the dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from pathlib import Path
from typing import Any, TypeVar

from server.store import budget_sql as budget
from server.store import keys_sql
from server.store import ledger_sql as ledger
from server.store import spend_sql as spend
from server.store.conversations import COLUMNS as RESPONSE_COLUMNS
from server.store.conversations import (
    ITEM_COLUMNS,
    ChainLink,
    StoredItem,
    StoredResponse,
    chain_sql,
    conversations_schema,
    item_rows,
    item_sizes_sql,
)
from server.store.keys import KEY_ADDED_COLUMNS, KEY_COLUMNS, ApiKey, key_from_row, key_row
from server.store.versions import schema_version_sql, version_statements
from server.usage.budget import BudgetScope, Reservation, ScopeState, Settlement
from server.usage.record import UsagePage, UsageQuery, UsageRecord, UsageTotals

__all__ = ["SqliteStore"]

T = TypeVar("T")

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    user TEXT NOT NULL,
    tier TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS api_keys_by_time ON api_keys (created_at);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
    + ledger.usage_schema(real="REAL", time="INTEGER")
    + conversations_schema("REAL", "INTEGER")
    + budget.budget_schema(time="INTEGER", int64="INTEGER")
    + schema_version_sql
)


class SqliteStore:
    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self._path, timeout=5, check_same_thread=False, isolation_level=None
            )
            db.execute("PRAGMA busy_timeout=5000")
            # in WAL, NORMAL syncs at checkpoints, not every commit: a commit survives the
            # process being killed, only a crash of the machine may lose the last ones (as
            # it loses the records still queued in memory); FULL's sync a commit cost a
            # budgeted call ~140 us of CPU here (bench, --also budgets)
            db.execute("PRAGMA synchronous=NORMAL")
            _wal(db)
            db.executescript(_SCHEMA)
            _add_missing_columns(db)
            self._db = db
        return self._db

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, lambda: work(self._connect())
        )

    async def _run(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await self._call(lambda db: db.execute(sql, args).fetchall())

    async def open(self) -> None:
        await self._call(lambda db: None)

    async def create_key(self, key: ApiKey) -> None:
        row = key_row(key)
        values = ", ".join("?" * len(row))
        await self._run(f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ({values})", *row)

    async def find_key(self, key_id: str) -> ApiKey | None:
        rows = await self._run(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", key_id)
        return key_from_row(rows[0]) if rows else None

    async def key_ids_since(self, created_at: float) -> list[str]:
        rows = await self._run("SELECT id FROM api_keys WHERE created_at >= ?", created_at)
        return [row[0] for row in rows]

    async def revoke_key(self, key_id: str, at: float) -> bool:
        rows = await self._run(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING id",
            at,
            key_id,
        )
        return bool(rows)

    async def update_key(self, key_id: str, changes: Mapping[str, Any], at: float) -> ApiKey | None:
        sql, args = keys_sql.update_sql(changes, at, _placeholder)
        rows = await self._run(sql, *args, key_id)
        return key_from_row(rows[0]) if rows else None

    async def list_keys_page(self, page: keys_sql.KeyPage) -> list[ApiKey]:
        sql, args = keys_sql.page_sql(page, _placeholder)
        return [key_from_row(row) for row in await self._run(sql, *args)]

    async def spend(self, query: spend.SpendQuery) -> spend.SpendReport:
        groups_sql, totals_sql, args = spend.spend_sql(query, _placeholder, spend.DAY_SQLITE)

        def read(db: sqlite3.Connection) -> spend.SpendReport:
            with _transaction(db, "BEGIN"):  # one snapshot: the groups and the totals agree
                rows = db.execute(groups_sql, args).fetchall() if groups_sql else []
                totals = db.execute(totals_sql, args).fetchone()
            return spend.SpendReport(
                [spend.SpendRow(*row) for row in rows], spend.SpendRow(*totals)
            )

        return await self._call(read)

    async def get_or_create_secret(self, name: str, value: str) -> str:
        def read(db: sqlite3.Connection) -> str:
            with _transaction(db, "BEGIN IMMEDIATE"):  # one writer: the first value stays
                db.execute(
                    "INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    (name, value),
                )
                row = db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            return str(row[0])

        return await self._call(read)

    async def write_usage(
        self, records: Sequence[UsageRecord], settlements: Sequence[Settlement] = ()
    ) -> None:
        ids = [s.record_id for s in settlements]

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db, "BEGIN IMMEDIATE"):  # one writer: checked, then inserted
                new = budget.sqlite_unwritten(db, ids) if ids else ()
                db.executemany(ledger.insert_sql(_placeholder), records)
                if new:
                    inserted = new & {record.id for record in records}
                    budget.sqlite_settle(db, budget.settled_now(settlements, inserted))

        await self._call(write)

    # --- budgets (server/store/budget_sql.py) ---

    async def reserve_budget(
        self, hold_id: str, scopes: Sequence[BudgetScope], nanos: int, lease_s: float
    ) -> Reservation:
        def reserve(db: sqlite3.Connection) -> Reservation:
            with _transaction(db, "BEGIN IMMEDIATE"):
                lease_until = _now_us() + round(lease_s * 1_000_000)
                return budget.sqlite_reserve(db, hold_id, scopes, nanos, lease_until)

        return await self._call(reserve)

    async def budget_states(self, scopes: Sequence[BudgetScope]) -> tuple[ScopeState, ...]:
        def read(db: sqlite3.Connection) -> tuple[ScopeState, ...]:
            with _transaction(db, "BEGIN"):  # one snapshot, and no write
                found = budget.sqlite_states(db, scopes)
            return budget.reservation(scopes, found, True).states

        return await self._call(read)

    async def renew_holds(self, hold_ids: Sequence[str], lease_s: float) -> None:
        if not hold_ids:
            return

        def renew(db: sqlite3.Connection) -> None:
            with _transaction(db, "BEGIN IMMEDIATE"):
                budget.sqlite_renew(db, hold_ids, _now_us() + round(lease_s * 1_000_000))

        await self._call(renew)

    async def release_hold(self, hold_id: str, periods: Sequence[tuple[str, int]]) -> None:
        def release(db: sqlite3.Connection) -> None:
            with _transaction(db, "BEGIN IMMEDIATE"):
                budget.sqlite_release(db, hold_id, periods, _now_us())

        await self._call(release)

    async def release_expired_holds(self) -> int:
        def sweep(db: sqlite3.Connection) -> int:
            with _transaction(db, "BEGIN IMMEDIATE"):
                return budget.sqlite_sweep(db, _now_us())

        return await self._call(sweep)

    async def query_usage(self, query: UsageQuery) -> UsagePage:
        where, args = ledger.filters(query, _placeholder)

        def read(db: sqlite3.Connection) -> UsagePage:
            with _transaction(db, "BEGIN"):  # one snapshot: the page and the totals agree
                rows = db.execute(ledger.page_sql(where, "?"), (*args, query.limit)).fetchall()
                totals = db.execute(ledger.totals_sql(where), args).fetchone()
            return UsagePage([UsageRecord(*row) for row in rows], UsageTotals(*totals))

        return await self._call(read)

    async def ping(self) -> None:
        await self._run("SELECT 1")

    async def save_response(self, stored: StoredResponse, items: Sequence[StoredItem]) -> None:
        def write(db: sqlite3.Connection) -> None:
            with _transaction(db, "BEGIN IMMEDIATE"):
                db.execute(
                    f"INSERT INTO responses ({RESPONSE_COLUMNS}) VALUES ({', '.join('?' * 10)})",
                    astuple(stored),
                )
                db.executemany(
                    f"INSERT INTO response_items ({ITEM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    item_rows(stored, items),
                )

        await self._call(write)

    async def find_response(
        self, owner: str, response_id: str, now: float
    ) -> StoredResponse | None:
        rows = await self._run(
            f"SELECT {RESPONSE_COLUMNS} FROM responses "
            "WHERE id = ? AND owner = ? AND expires_at > ?",
            response_id,
            owner,
            now,
        )
        return StoredResponse(*rows[0]) if rows else None

    async def response_chain(self, owner: str, response_id: str, now: float) -> list[ChainLink]:
        rows = await self._run(chain_sql(("?1", "?2", "?3")), response_id, owner, now)
        return [ChainLink(*row) for row in rows]

    async def item_sizes(
        self, owner: str, item_ids: Sequence[str], now: float
    ) -> dict[str, tuple[str, int]]:
        if not item_ids:
            return {}
        ids = ", ".join("?" * len(item_ids))  # a caller's 1,000 at most (SQLite takes 32,766)
        sql = item_sizes_sql(ids, ("?", "?"))  # its order: owner, the ids, now
        rows = await self._run(sql, owner, *item_ids, now)
        return {item: (response, size) for item, response, size in rows}

    async def load_items(self, owner: str, where: Sequence[tuple[str, str]]) -> dict[str, str]:
        if not where:
            return {}
        pairs = ", ".join("(?, ?)" for _ in where)
        rows = await self._run(
            "SELECT item_id, item FROM response_items WHERE owner = ? "
            f"AND (response_id, item_id) IN (VALUES {pairs})",
            owner,
            *(part for pair in where for part in pair),
        )
        return dict(rows)

    async def delete_response(self, owner: str, response_id: str, now: float) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            with _transaction(db, "BEGIN IMMEDIATE"):
                gone = db.execute(
                    "DELETE FROM responses WHERE id = ? AND owner = ? AND expires_at > ? "
                    "RETURNING id",
                    (response_id, owner, now),
                ).fetchall()
                db.execute(
                    "DELETE FROM response_items WHERE response_id = ? AND owner = ?",
                    (response_id, owner),
                )
            return bool(gone)

        return await self._call(delete)

    async def purge_responses(self, now: float, limit: int) -> int:
        def purge(db: sqlite3.Connection) -> int:
            with _transaction(db, "BEGIN IMMEDIATE"):
                ids = db.execute(
                    "DELETE FROM responses WHERE id IN (SELECT id FROM responses "
                    "WHERE expires_at <= ? LIMIT ?) RETURNING id",
                    (now, limit),
                ).fetchall()
                db.executemany("DELETE FROM response_items WHERE response_id = ?", ids)
            return len(ids)

        return await self._call(purge)

    async def aclose(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
        self._thread.shutdown(wait=False)


def _wal(db: sqlite3.Connection, timeout_s: float = 5.0) -> None:
    """WAL mode, retried while another process opens the same file: SQLite answers a
    journal-mode change it cannot take the lock for at once with `database is
    locked`, without its busy handler (seen with two workers starting together)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)  # on the store's own thread: the loop does not wait


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a store made by an earlier version up to date (one transaction, so
    workers opening the same file at once agree); refuse one made by a newer version."""
    with _transaction(db, "BEGIN IMMEDIATE"):
        found = db.execute("SELECT max(version) FROM tandem_schema").fetchone()[0]
        statements = version_statements(found)  # raises first for a newer store
        present = {row[1] for row in db.execute("PRAGMA table_info(usage_records)")}
        statements += ledger.upgrade_sql(present)
        present = {row[1] for row in db.execute("PRAGMA table_info(api_keys)")}
        statements += ledger.added_columns_sql("api_keys", KEY_ADDED_COLUMNS, present, "REAL")
        for statement in statements:
            db.execute(statement)


def _placeholder(n: int) -> str:
    return "?"


def _now_us() -> int:
    """This host's clock, for holds' leases (one host shares a SQLite file)."""
    return time.time_ns() // 1000


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, begin: str) -> Iterator[None]:
    db.execute(begin)
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
