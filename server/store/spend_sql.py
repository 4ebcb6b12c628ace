"""Spend reports' SQL, shared by both stores: the ledger's cost and tokens summed and
grouped by the database (`GROUP BY`), never in Python."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from server.store.ledger_sql import where_clause

__all__ = ["GROUPS", "GroupBy", "SpendQuery", "SpendReport", "SpendRow", "spend_sql"]

GroupBy = Literal["day", "model", "user", "key"]
GROUPS: tuple[GroupBy, ...] = ("day", "model", "user", "key")

# a day is the record's UTC date, YYYY-MM-DD: the one expression that differs by backend
# (SQLite keeps epoch microseconds, PostgreSQL a timestamptz)
DAY_SQLITE = "strftime('%Y-%m-%d', created_at / 1000000, 'unixepoch')"
DAY_POSTGRES = "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
_COLUMNS = {"model": "model", "user": '"user"', "key": "COALESCE(key_id, '')"}
_SUMS = (
    "CAST(COUNT(*) AS BIGINT), CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT), "
    "CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT), "
    "CAST(COALESCE(SUM(cost_nanos), 0) AS BIGINT)"
)


@dataclass(frozen=True, slots=True)
class SpendQuery:
    """Which records (`since` inclusive, `until` exclusive: epoch microseconds), and how
    to group them (None: the totals alone)."""

    user: str | None = None
    key_id: str | None = None
    model: str | None = None
    since: int | None = None
    until: int | None = None
    group_by: GroupBy | None = None


class SpendRow(NamedTuple):
    group: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_nanos: int


class SpendReport(NamedTuple):
    groups: list[SpendRow]  # by descending cost, then group
    totals: SpendRow  # its group is ""


def spend_sql(
    query: SpendQuery,
    placeholder: Callable[[int], str],
    day: str,
    time: Callable[[int], Any] = int,
) -> tuple[str | None, str, list[Any]]:
    """(the groups' SELECT, or None without `group_by`; the totals' SELECT; their
    arguments). `day` is the backend's day expression; `time` turns epoch
    microseconds into what `created_at` holds."""
    where, args = where_clause(
        (
            ('"user" = {}', query.user),
            ("key_id = {}", query.key_id),
            ("model = {}", query.model),
            ("created_at >= {}", None if query.since is None else time(query.since)),
            ("created_at < {}", None if query.until is None else time(query.until)),
        ),
        placeholder,
    )
    where = f" {where}" if where else ""
    totals = f"SELECT '', {_SUMS} FROM usage_records{where}"
    if query.group_by is None:
        return None, totals, args
    group = day if query.group_by == "day" else _COLUMNS[query.group_by]
    groups = (
        f"SELECT {group} AS spend_group, {_SUMS} FROM usage_records{where} "
        "GROUP BY spend_group ORDER BY 5 DESC, spend_group"
    )
    return groups, totals, args
