"""The PostgreSQL store (asyncpg), for replicas that share keys and usage.

Unknown query parameters of the URL are PostgreSQL settings (asyncpg's
rule), so `?search_path=name` selects a schema; it is created if missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import astuple
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

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
from server.usage.record import (
    UsagePage,
    UsageQuery,
    UsageRecord,
    UsageTotals,
    datetime_of,
    microseconds_of,
)

__all__ = ["PostgresStore"]

COMMAND_TIMEOUT_S = 5.0  # a stuck database fails the call instead of hanging it
CONNECT_TIMEOUT_S = 5.0  # asyncpg's default is 60 s: too long for a shutdown flush
# Replicas starting together on an empty database make the schema in turn: two
# `CREATE ... IF NOT EXISTS` at once can both miss the other's and one then fails.
SCHEMA_LOCK = 0x74616E64656D  # "tandem", one advisory lock id for every schema

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    "user" TEXT NOT NULL,
    tier TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS api_keys_by_time ON api_keys (created_at);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
    + ledger.usage_schema(real="DOUBLE PRECISION", time="TIMESTAMPTZ")
    + conversations_schema("DOUBLE PRECISION", "BIGINT")
    + budget.budget_schema(time="TIMESTAMPTZ", int64="BIGINT")
    + budget.PG_FUNCTIONS
    + schema_version_sql
)
_CREATED_AT = UsageRecord._fields.index("created_at")  # a timestamptz in the table


async def _add_missing_columns(connection: asyncpg.Connection) -> None:
    """Bring a store made by an earlier version up to date (under the schema lock);
    refuse one made by a newer version."""
    found = await connection.fetchval("SELECT max(version) FROM tandem_schema")
    statements = version_statements(found)  # raises first for a newer store
    present_sql = (
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1"
    )
    present = {row[0] for row in await connection.fetch(present_sql, "usage_records")}
    statements += ledger.upgrade_sql(present)
    present = {row[0] for row in await connection.fetch(present_sql, "api_keys")}
    statements += ledger.added_columns_sql(
        "api_keys", KEY_ADDED_COLUMNS, present, "DOUBLE PRECISION"
    )
    for statement in statements:
        await connection.execute(statement)


class PostgresStore:
    def __init__(self, url: str) -> None:
        self._url = url
        self._schema = parse_qs(urlsplit(url).query).get("search_path", [None])[0]
        # a plain name, checked with the config (server.config: usage.store)
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        connection = await asyncpg.connect(
            self._url, timeout=CONNECT_TIMEOUT_S, command_timeout=COMMAND_TIMEOUT_S
        )
        try:
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                if self._schema:
                    await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
                await connection.execute(_SCHEMA)
                await _add_missing_columns(connection)
        finally:
            await connection.close()
        self._pool = await asyncpg.create_pool(
            self._url,
            min_size=0,
            max_size=10,
            timeout=CONNECT_TIMEOUT_S,
            command_timeout=COMMAND_TIMEOUT_S,
        )

    async def _ready(self) -> asyncpg.Pool:
        await self.open()
        assert self._pool is not None
        return self._pool

    async def ping(self) -> None:
        pool = await self._ready()
        await pool.fetchval("SELECT 1")

    async def create_key(self, key: ApiKey) -> None:
        pool = await self._ready()
        row = key_row(key)
        values = ", ".join(_placeholder(n) for n in range(1, len(row) + 1))
        await pool.execute(f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ({values})", *row)

    async def find_key(self, key_id: str) -> ApiKey | None:
        pool = await self._ready()
        row = await pool.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        return key_from_row(row) if row else None

    async def key_ids_since(self, created_at: float) -> list[str]:
        pool = await self._ready()
        rows = await pool.fetch("SELECT id FROM api_keys WHERE created_at >= $1", created_at)
        return [row[0] for row in rows]

    async def revoke_key(self, key_id: str, at: float) -> bool:
        pool = await self._ready()
        row = await pool.fetchrow(
            "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL RETURNING id",
            at,
            key_id,
        )
        return row is not None

    async def update_key(self, key_id: str, changes: Mapping[str, Any], at: float) -> ApiKey | None:
        pool = await self._ready()
        sql, args = keys_sql.update_sql(changes, at, _placeholder)
        row = await pool.fetchrow(sql, *args, key_id)
        return key_from_row(row) if row else None

    async def list_keys_page(self, page: keys_sql.KeyPage) -> list[ApiKey]:
        pool = await self._ready()
        sql, args = keys_sql.page_sql(page, _placeholder)
        return [key_from_row(row) for row in await pool.fetch(sql, *args)]

    async def spend(self, query: spend.SpendQuery) -> spend.SpendReport:
        pool = await self._ready()
        groups_sql, totals_sql, args = spend.spend_sql(
            query, _placeholder, spend.DAY_POSTGRES, datetime_of
        )
        # one snapshot: the groups and the totals agree even while batches land
        async with (
            pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = await connection.fetch(groups_sql, *args) if groups_sql else []
            totals = await connection.fetchrow(totals_sql, *args)
        assert totals is not None
        return spend.SpendReport([spend.SpendRow(*row) for row in rows], spend.SpendRow(*totals))

    async def get_or_create_secret(self, name: str, value: str) -> str:
        pool = await self._ready()
        # replicas asking at once: one insert wins, and every one reads the winner's
        await pool.execute(
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING", name, value
        )
        stored = await pool.fetchval("SELECT value FROM secrets WHERE name = $1", name)
        return str(stored)

    async def write_usage(
        self, records: Sequence[UsageRecord], settlements: Sequence[Settlement] = ()
    ) -> None:
        pool = await self._ready()
        rows = [
            (*record[:_CREATED_AT], datetime_of(record.created_at), *record[_CREATED_AT + 1 :])
            for record in records
        ]
        async with pool.acquire() as connection, connection.transaction():
            if not settlements:
                await connection.executemany(ledger.insert_sql(_placeholder), rows)
                return
            # only the records inserted now settle: a batch written twice settles once
            inserted = await connection.fetchmany(
                f"{ledger.insert_sql(_placeholder)} RETURNING id", rows
            )
            settled = budget.settled_now(settlements, (row[0] for row in inserted))
            if settled:
                await connection.execute(
                    budget.PG_SETTLE, *budget.pg_settle_args(settled, datetime_of)
                )

    # --- budgets (server/store/budget_sql.py) ---

    async def reserve_budget(
        self, hold_id: str, scopes: Sequence[BudgetScope], nanos: int, lease_s: float
    ) -> Reservation:
        pool = await self._ready()
        rows = await pool.fetch(
            budget.PG_RESERVE, *budget.pg_reserve_args(hold_id, scopes, nanos, lease_s, datetime_of)
        )
        found = {row[0]: (row[1], row[2]) for row in rows}
        admitted = all(row[3] for row in rows)
        return budget.reservation(scopes, found, admitted)

    async def budget_states(self, scopes: Sequence[BudgetScope]) -> tuple[ScopeState, ...]:
        pool = await self._ready()
        rows = await pool.fetch(budget.PG_STATES, *budget.pg_states_args(scopes, datetime_of))
        return budget.reservation(scopes, {row[0]: (row[1], row[2]) for row in rows}, True).states

    async def renew_holds(self, hold_ids: Sequence[str], lease_s: float) -> None:
        if hold_ids:
            pool = await self._ready()
            await pool.execute(budget.PG_RENEW, list(hold_ids), float(lease_s))

    async def release_hold(self, hold_id: str, periods: Sequence[tuple[str, int]]) -> None:
        ordered = sorted(periods)
        pool = await self._ready()
        await pool.execute(
            budget.PG_RELEASE,
            hold_id,
            [scope for scope, _ in ordered],
            [datetime_of(start) for _, start in ordered],
        )

    async def release_expired_holds(self) -> int:
        pool = await self._ready()
        freed: int = await pool.fetchval(budget.PG_SWEEP)
        return freed

    async def query_usage(self, query: UsageQuery) -> UsagePage:
        pool = await self._ready()
        where, args = ledger.filters(query, _placeholder, datetime_of)
        # one snapshot: the page and the totals agree even while batches land
        async with (
            pool.acquire() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = await connection.fetch(
                ledger.page_sql(where, _placeholder(len(args) + 1)), *args, query.limit
            )
            totals = await connection.fetchrow(ledger.totals_sql(where), *args)
        assert totals is not None
        return UsagePage(
            [
                UsageRecord._make(
                    (*row[:_CREATED_AT], microseconds_of(row[_CREATED_AT]), *row[_CREATED_AT + 1 :])
                )
                for row in rows
            ],
            UsageTotals(*totals),
        )

    async def save_response(self, stored: StoredResponse, items: Sequence[StoredItem]) -> None:
        pool = await self._ready()
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute(
                f"INSERT INTO responses ({RESPONSE_COLUMNS}) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                *astuple(stored),
            )
            await connection.executemany(
                f"INSERT INTO response_items ({ITEM_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
                item_rows(stored, items),
            )

    async def find_response(
        self, owner: str, response_id: str, now: float
    ) -> StoredResponse | None:
        pool = await self._ready()
        row = await pool.fetchrow(
            f"SELECT {RESPONSE_COLUMNS} FROM responses "
            "WHERE id = $1 AND owner = $2 AND expires_at > $3",
            response_id,
            owner,
            now,
        )
        return StoredResponse(*row) if row else None

    async def response_chain(self, owner: str, response_id: str, now: float) -> list[ChainLink]:
        pool = await self._ready()
        rows = await pool.fetch(chain_sql(("$1", "$2", "$3")), response_id, owner, now)
        return [ChainLink(*row) for row in rows]

    async def item_sizes(
        self, owner: str, item_ids: Sequence[str], now: float
    ) -> dict[str, tuple[str, int]]:
        if not item_ids:
            return {}
        pool = await self._ready()
        rows = await pool.fetch(
            item_sizes_sql("SELECT unnest($1::text[])", ("$2", "$3")), list(item_ids), owner, now
        )
        return {row[0]: (row[1], row[2]) for row in rows}

    async def load_items(self, owner: str, where: Sequence[tuple[str, str]]) -> dict[str, str]:
        if not where:
            return {}
        pool = await self._ready()
        rows = await pool.fetch(
            "SELECT item_id, item FROM response_items WHERE owner = $1 "
            "AND (response_id, item_id) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
            owner,
            [pair[0] for pair in where],
            [pair[1] for pair in where],
        )
        return {row[0]: row[1] for row in rows}

    async def delete_response(self, owner: str, response_id: str, now: float) -> bool:
        pool = await self._ready()
        async with pool.acquire() as connection, connection.transaction():
            gone = await connection.fetchval(
                "DELETE FROM responses WHERE id = $1 AND owner = $2 AND expires_at > $3 "
                "RETURNING id",
                response_id,
                owner,
                now,
            )
            await connection.execute(
                "DELETE FROM response_items WHERE response_id = $1 AND owner = $2",
                response_id,
                owner,
            )
        return gone is not None

    async def purge_responses(self, now: float, limit: int) -> int:
        pool = await self._ready()
        async with pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                "DELETE FROM responses WHERE id IN (SELECT id FROM responses "
                "WHERE expires_at <= $1 LIMIT $2) RETURNING id",
                now,
                limit,
            )
            ids = [row[0] for row in rows]
            await connection.execute(
                "DELETE FROM response_items WHERE response_id = ANY($1::text[])", ids
            )
        return len(ids)

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


def _placeholder(n: int) -> str:
    return f"${n}"
