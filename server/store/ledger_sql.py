"""The usage ledger's SQL, shared by both stores (placeholders are the one difference)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.usage.record import UsageQuery

__all__ = ["COLUMNS", "filters"]

# `user` is reserved in PostgreSQL; quoted, it means the same in SQLite
COLUMNS = (
    'id, request_id, "user", model, provider, protocol, prompt_tokens, completion_tokens, '
    "status, latency_ms, ttft_ms, created_at"
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
    conditions: list[str] = []
    args: list[Any] = []
    for condition, value in (
        ('"user" = {}', query.user),
        ("model = {}", query.model),
        ("created_at >= {}", None if query.since is None else time(query.since)),
        ("created_at < {}", None if query.until is None else time(query.until)),
    ):
        if value is not None:
            args.append(value)
            conditions.append(condition.format(placeholder(len(args))))
    return (f"WHERE {' AND '.join(conditions)}" if conditions else ""), args
