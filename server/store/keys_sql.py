"""The SQL of managing keys (the admin API), shared by both stores: a change to some
columns, and a page of keys after the last one seen (placeholders are the one difference)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from server.store.keys import KEY_COLUMNS

__all__ = ["UPDATABLE", "KeyPage", "page_sql", "update_sql"]

# the columns an update may change (the admin API's `update_mask` paths, less `budget`,
# which is the two columns `budget_nanos` and `budget_period`)
UPDATABLE = frozenset(
    (
        "models",
        "requests_per_minute",
        "tokens_per_minute",
        "max_concurrent_requests",
        "budget_nanos",
        "budget_period",
        "expires_at",
        "labels",
    )
)


@dataclass(frozen=True, slots=True)
class KeyPage:
    """Which keys, oldest first: those after `after` (the last one seen's `created_at`
    and id), at most `limit`."""

    user: str | None = None
    tier: str | None = None
    after: tuple[float, str] | None = None
    limit: int = 50


def update_sql(
    changes: Mapping[str, Any], at: float, placeholder: Callable[[int], str]
) -> tuple[str, list[Any]]:
    """`UPDATE` setting the `changes` (columns of UPDATABLE, values as `ApiKey` holds
    them) and `updated_at` of one key, whose id is the last argument; it returns the
    key as KEY_COLUMNS."""
    unknown = changes.keys() - UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    args: list[Any] = []
    sets: list[str] = []
    for column, value in (*sorted(changes.items()), ("updated_at", at)):
        if column == "models" and value is not None:
            value = json.dumps(list(value))
        elif column == "labels":
            value = json.dumps(dict(value or {}), sort_keys=True)
        args.append(value)
        sets.append(f"{column} = {placeholder(len(args))}")
    where = placeholder(len(args) + 1)
    sql = f"UPDATE api_keys SET {', '.join(sets)} WHERE id = {where} RETURNING {KEY_COLUMNS}"
    return sql, args


def page_sql(page: KeyPage, placeholder: Callable[[int], str]) -> tuple[str, list[Any]]:
    """One page of keys as KEY_COLUMNS, and its arguments: one more than `limit` is
    asked for, so the caller knows whether a next page exists."""
    conditions: list[str] = []
    args: list[Any] = []
    for condition, value in (('"user" = {}', page.user), ("tier = {}", page.tier)):
        if value is not None:
            args.append(value)
            conditions.append(condition.format(placeholder(len(args))))
    if page.after is not None:
        at, key_id = page.after
        args += [at, at, key_id]  # three: SQLite's `?` are taken in order
        later, same, after = (placeholder(len(args) - n) for n in (2, 1, 0))
        conditions.append(f"(created_at > {later} OR (created_at = {same} AND id > {after}))")
    args.append(page.limit + 1)
    where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
    sql = (
        f"SELECT {KEY_COLUMNS} FROM api_keys {where}"
        f"ORDER BY created_at, id LIMIT {placeholder(len(args))}"
    )
    return sql, args
