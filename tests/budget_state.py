"""Budget state read straight from a store's database (SQLite file or PostgreSQL schema),
not through the code under test: a period's row, the open holds, the ledger's sum."""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncpg

from server.usage.record import datetime_of

__all__ = ["ledger_cost", "open_holds", "period_state"]


async def _fetch(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite:///"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return db.execute(sql.replace("$1", "?").replace("$2", "?"), args).fetchall()
        finally:
            db.close()
    connection = await asyncpg.connect(url)
    try:
        pg_args = [datetime_of(a) if isinstance(a, int) else a for a in args]  # moments
        return [tuple(row) for row in await connection.fetch(sql, *pg_args)]
    finally:
        await connection.close()


async def period_state(url: str, scope: str, start_us: int) -> tuple[int, int] | None:
    """(spent, reserved) of one scope's period, None if it has no row."""
    rows = await _fetch(
        url,
        "SELECT spent_nanos, reserved_nanos FROM budget_periods "
        "WHERE scope = $1 AND period_start = $2",
        scope,
        start_us,
    )
    return (int(rows[0][0]), int(rows[0][1])) if rows else None


async def open_holds(url: str) -> int:
    """How many holds are neither settled nor swept."""
    rows = await _fetch(url, "SELECT count(*) FROM budget_holds WHERE NOT released")
    return int(rows[0][0])


async def ledger_cost(url: str, key_id: str) -> int:
    """The ledger's sum of `cost_nanos` over one key's records."""
    rows = await _fetch(
        url, "SELECT COALESCE(SUM(cost_nanos), 0) FROM usage_records WHERE key_id = $1", key_id
    )
    return int(rows[0][0])
