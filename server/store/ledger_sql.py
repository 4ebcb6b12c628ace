"""The usage ledger's SQL, shared by both stores (placeholders are the one difference)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from server.usage.record import UsageQuery

__all__ = [
    "ADDED_COLUMNS",
    "ADDED_INDEXES",
    "BACKFILL_SQL",
    "added_columns_sql",
    "filters",
    "insert_sql",
    "page_sql",
    "totals_sql",
    "upgrade_sql",
    "usage_schema",
    "where_clause",
]

# `user` is reserved in PostgreSQL; quoted, it means the same in SQLite
COLUMNS = (
    'id, request_id, "user", model, provider, protocol, prompt_tokens, completion_tokens, '
    "status, latency_ms, ttft_ms, created_at, usage_source, caller_kind, cached_tokens, "
    "reasoning_tokens, cache_write_tokens, cost_nanos, cost_source, key_id, tier"
)

# Columns added since the table was first made, in order: a store made by an
# earlier version gains them at open. Rows written before then keep the
# defaults: their counts were taken as the upstream's.
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("usage_source", "TEXT NOT NULL DEFAULT 'upstream'"),
    ("caller_kind", "TEXT NOT NULL DEFAULT 'user'"),
    ("cached_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("reasoning_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("cache_write_tokens", "INTEGER NOT NULL DEFAULT 0"),
    ("cost_nanos", "BIGINT NOT NULL DEFAULT 0"),
    ("cost_source", "TEXT NOT NULL DEFAULT 'unpriced'"),
    ("key_id", "TEXT"),
    ("tier", "TEXT NOT NULL DEFAULT ''"),
)
# Indexes on added columns, made once the columns are there.
ADDED_INDEXES = (
    "CREATE INDEX IF NOT EXISTS usage_records_by_key ON usage_records (key_id, created_at)",
)
# What each added column says of the rows that came before it: earlier versions
# wrote admin-key and anonymous calls as the users `admin` and `anonymous` (for
# those two, the kind is spelled as the name).
BACKFILL_SQL = {
    "caller_kind": """UPDATE usage_records SET caller_kind = "user" """
    """WHERE "user" IN ('admin', 'anonymous')""",
}


def usage_schema(*, real: str, time: str) -> str:
    """The ledger's table as first made, and its indexes; `real` and `time` are the
    backend's column types. `ADDED_COLUMNS` follow."""
    return f"""
CREATE TABLE IF NOT EXISTS usage_records (
    id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    "user" TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    protocol TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    status TEXT NOT NULL,
    latency_ms {real} NOT NULL,
    ttft_ms {real},
    created_at {time} NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_records_by_time ON usage_records (created_at);
CREATE INDEX IF NOT EXISTS usage_records_by_user ON usage_records ("user", created_at);
"""


def added_columns_sql(
    table: str, added: tuple[tuple[str, str], ...], present: Collection[str], real: str
) -> list[str]:
    """ALTER statements adding to `table` the columns of `added` not `present`."""
    return [
        f"ALTER TABLE {table} ADD COLUMN {name} {definition.format(real=real)}"
        for name, definition in added
        if name not in present
    ]


def upgrade_sql(present: Collection[str]) -> list[str]:
    """The statements, in order, that bring a ledger whose table has the columns
    `present` up to date: each missing added column, then its backfill."""
    statements: list[str] = []
    for name, definition in ADDED_COLUMNS:
        if name not in present:
            statements.append(f"ALTER TABLE usage_records ADD COLUMN {name} {definition}")
            if name in BACKFILL_SQL:
                statements.append(BACKFILL_SQL[name])
    return statements + list(ADDED_INDEXES)


def insert_sql(placeholder: Callable[[int], str]) -> str:
    """One record; one already stored (same id) is skipped (SQLite 3.24+, PostgreSQL 9.5+)."""
    values = ", ".join(placeholder(n) for n in range(1, COLUMNS.count(",") + 2))
    return f"INSERT INTO usage_records ({COLUMNS}) VALUES ({values}) ON CONFLICT (id) DO NOTHING"


def page_sql(where: str, limit: str) -> str:
    """The matching records, newest first; `limit` is the page size's placeholder."""
    return (
        f"SELECT {COLUMNS} FROM usage_records {where} "
        f"ORDER BY created_at DESC, id DESC LIMIT {limit}"
    )


def totals_sql(where: str) -> str:
    """`UsageTotals`' columns, summed by the database (PostgreSQL's SUM of a BIGINT is a
    NUMERIC: cast back, as the totals are int64)."""
    return (
        "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), "
        "COALESCE(SUM(completion_tokens), 0), "
        f"CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT) FROM usage_records {where}"
    )


def filters(
    query: UsageQuery,
    placeholder: Callable[[int], str],
    time: Callable[[int], Any] = int,
) -> tuple[str, list[Any]]:
    """The WHERE clause (or "") and its arguments.

    `placeholder(n)` spells argument n (1-based);
    `time` turns epoch microseconds into what the `created_at` column holds.
    """
    return where_clause(
        (
            ('"user" = {}', query.user),
            ("caller_kind = {}", query.caller_kind),
            ("model = {}", query.model),
            ("created_at >= {}", None if query.since is None else time(query.since)),
            ("created_at < {}", None if query.until is None else time(query.until)),
        ),
        placeholder,
    )


def where_clause(
    conditions: Iterable[tuple[str, Any]], placeholder: Callable[[int], str]
) -> tuple[str, list[Any]]:
    """`WHERE` and each condition (`"model = {}"`) whose value is not None, the values
    its arguments; "" when none is."""
    clauses: list[str] = []
    args: list[Any] = []
    for condition, value in conditions:
        if value is not None:
            args.append(value)
            clauses.append(condition.format(placeholder(len(args))))
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args
