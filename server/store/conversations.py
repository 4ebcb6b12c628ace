"""Stored responses (the conversation store): what `/v1/responses` keeps with `store`.

A row is one response: its id, its owner (whose it is: `server.core.conversations`
says how a caller is named), when it was made and expires, the response object and
its own input items (JSON text), how its streamed text was split (for a replay),
the response it continues and the bytes of stored input and output along its chain.
Each item id of its input and output is also indexed, for `item_reference`.
A read never returns an expired row; `purge_responses` removes them, a bounded
batch at a time. Both stores (SQLite, PostgreSQL) implement this with the SQL below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "COLUMNS",
    "ConversationStore",
    "StoredResponse",
    "chain_sql",
    "conversations_schema",
]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    owner: str
    created_at: float
    expires_at: float
    previous_id: str | None
    chain_bytes: int  # stored input and output of this response and all it continues
    response: str  # the response object, JSON
    input: str  # its own input items (each with an id), a JSON list
    splits: str  # the lengths of its streamed pieces, per output item, a JSON list


class ConversationStore(Protocol):
    async def save_response(self, stored: StoredResponse, item_ids: Sequence[str]) -> None:
        """Keep a response and index its items' ids, in one transaction."""

    async def find_response(
        self, owner: str, response_id: str, now: float
    ) -> StoredResponse | None:
        """`owner`'s response `response_id`, unless it expired (or was never theirs)."""

    async def response_chain(
        self, owner: str, response_id: str, now: float
    ) -> list[StoredResponse]:
        """The response and those it continues, oldest first, as far as they live."""

    async def find_item(self, owner: str, item_id: str, now: float) -> StoredResponse | None:
        """`owner`'s newest live response holding an item of that id (input or output)."""

    async def delete_response(self, owner: str, response_id: str, now: float) -> bool:
        """Delete `owner`'s live response; whether there was one."""

    async def purge_responses(self, now: float, limit: int) -> int:
        """Remove up to `limit` expired responses (and their items); how many went."""


COLUMNS = "id, owner, created_at, expires_at, previous_id, chain_bytes, response, input, splits"


def conversations_schema(real: str, big: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at {real} NOT NULL,
    expires_at {real} NOT NULL,
    previous_id TEXT,
    chain_bytes {big} NOT NULL,
    response TEXT NOT NULL,
    input TEXT NOT NULL,
    splits TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at);
CREATE TABLE IF NOT EXISTS response_items (
    owner TEXT NOT NULL,
    item_id TEXT NOT NULL,
    response_id TEXT NOT NULL,
    created_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS response_items_by_id ON response_items (owner, item_id);
CREATE INDEX IF NOT EXISTS response_items_by_response ON response_items (response_id);
"""


def chain_sql(p: tuple[str, str, str]) -> str:
    """The chain from one response back (placeholders: id, owner, now), oldest first.
    A link that expired or was deleted ends it."""
    rid, owner, now = p
    return f"""
WITH RECURSIVE chain(id, previous_id, depth) AS (
    SELECT id, previous_id, 0 FROM responses WHERE id = {rid} AND owner = {owner}
        AND expires_at > {now}
    UNION ALL
    SELECT r.id, r.previous_id, c.depth + 1 FROM responses r JOIN chain c ON r.id = c.previous_id
        WHERE r.owner = {owner} AND r.expires_at > {now}
)
SELECT {", ".join("r." + c for c in COLUMNS.split(", "))}
FROM responses r JOIN chain c ON r.id = c.id ORDER BY c.depth DESC
"""
