"""Stored responses (the conversation store): what `/v1/responses` keeps with `store`.

A row is one response: its id, its owner (whose it is: `server.core.conversations`
says how a caller is named), when it was made and expires, the response object and
its own input items (JSON text), how its streamed text was split (for a replay),
the response it continues and the bytes of stored input and output along its chain.
The items an `item_reference` may name (its output items, the input items the
caller gave an id) are also kept one a row, with their size in UTF-8 bytes, so a
reference is resolved by one indexed query that reads only the items named, after
their sizes were counted. A read never returns an expired row; `purge_responses`
removes them, a bounded batch at a time. Both stores (SQLite, PostgreSQL) implement
this with the SQL below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "COLUMNS",
    "ITEM_COLUMNS",
    "MAX_CHAIN_DEPTH",
    "MAX_ID_CHARS",
    "ChainLink",
    "ConversationStore",
    "StoredItem",
    "StoredResponse",
    "chain_sql",
    "conversations_schema",
    "item_rows",
    "item_sizes_sql",
    "storable_id",
]

MAX_ID_CHARS = 256  # ids are ours (`resp_` and 32 hex digits) or items' the caller named
# the responses a chain reads at most: a corrupt row (a cycle) cannot hang a store's
# thread, and a conversation this long is refused (server.core.conversations)
MAX_CHAIN_DEPTH = 10_000


def storable_id(name: str) -> bool:
    """An id both stores can hold and index: PostgreSQL text holds no NUL nor a lone
    surrogate (which a URL's escapes can spell), and its btree no key over ~2.7 KB."""
    if len(name) > MAX_ID_CHARS or "\x00" in name:
        return False
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


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
    # its output items (a JSON list), apart: a chain reads what its bound counts, not
    # the settings each response echoes (instructions, tools)
    output: str = "[]"


@dataclass(frozen=True, slots=True)
class ChainLink:
    """What a continuation reads of each response of its chain."""

    id: str
    previous_id: str | None
    input: str
    output: str


@dataclass(frozen=True, slots=True)
class StoredItem:
    """An item a later `item_reference` may name, kept with its response."""

    id: str
    item: str  # JSON
    size: int  # of `item`, in UTF-8 bytes


class ConversationStore(Protocol):
    async def save_response(self, stored: StoredResponse, items: Sequence[StoredItem]) -> None:
        """Keep a response and the items it makes referable, in one transaction."""

    async def find_response(
        self, owner: str, response_id: str, now: float
    ) -> StoredResponse | None:
        """`owner`'s response `response_id`, unless it expired (or was never theirs)."""

    async def response_chain(self, owner: str, response_id: str, now: float) -> list[ChainLink]:
        """The response and those it continues, oldest first, as far as they live
        (`MAX_CHAIN_DEPTH` + 1 at most)."""

    async def item_sizes(
        self, owner: str, item_ids: Sequence[str], now: float
    ) -> dict[str, tuple[str, int]]:
        """Per id, the response keeping `owner`'s newest live item of that id and the
        item's size: one query, the items themselves not read."""

    async def load_items(self, owner: str, where: Sequence[tuple[str, str]]) -> dict[str, str]:
        """The items (JSON) by id, each named with its response (`(response_id, id)`,
        as `item_sizes` answered): one query."""

    async def delete_response(self, owner: str, response_id: str, now: float) -> bool:
        """Delete `owner`'s live response; whether there was one."""

    async def purge_responses(self, now: float, limit: int) -> int:
        """Remove up to `limit` expired responses (and their items); how many went."""


COLUMNS = (
    "id, owner, created_at, expires_at, previous_id, chain_bytes, response, input, splits, output"
)


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
    splits TEXT NOT NULL,
    output TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at);
CREATE TABLE IF NOT EXISTS response_items (
    owner TEXT NOT NULL,
    item_id TEXT NOT NULL,
    response_id TEXT NOT NULL,
    created_at {real} NOT NULL,
    item TEXT NOT NULL,
    size {big} NOT NULL
);
CREATE INDEX IF NOT EXISTS response_items_by_id ON response_items (owner, item_id);
CREATE INDEX IF NOT EXISTS response_items_by_response ON response_items (response_id);
"""


def chain_sql(p: tuple[str, str, str]) -> str:
    """The chain from one response back (placeholders: id, owner, now), oldest first,
    `MAX_CHAIN_DEPTH` + 1 responses at most. A link that expired or was deleted ends
    it (so its oldest then continues one not read)."""
    rid, owner, now = p
    return f"""
WITH RECURSIVE chain(id, previous_id, depth) AS (
    SELECT id, previous_id, 0 FROM responses WHERE id = {rid} AND owner = {owner}
        AND expires_at > {now}
    UNION ALL
    SELECT r.id, r.previous_id, c.depth + 1 FROM responses r JOIN chain c ON r.id = c.previous_id
        WHERE r.owner = {owner} AND r.expires_at > {now} AND c.depth < {MAX_CHAIN_DEPTH}
)
SELECT r.id, r.previous_id, r.input, r.output
FROM responses r JOIN chain c ON r.id = c.id ORDER BY c.depth DESC
"""


ITEM_COLUMNS = "owner, item_id, response_id, created_at, item, size"


def item_sizes_sql(ids: str, p: tuple[str, str]) -> str:
    """Per item id in `ids` (an SQL list), the newest live row's response and size
    (placeholders: owner, now)."""
    owner, now = p
    return f"""
SELECT item_id, response_id, size FROM (
    SELECT i.item_id, i.response_id, i.size, ROW_NUMBER() OVER (
        PARTITION BY i.item_id ORDER BY i.created_at DESC, i.response_id DESC) AS n
    FROM response_items i JOIN responses r ON r.id = i.response_id
    WHERE i.owner = {owner} AND i.item_id IN ({ids}) AND r.expires_at > {now}
) newest WHERE n = 1
"""


def item_rows(stored: StoredResponse, items: Sequence[StoredItem]) -> list[tuple[object, ...]]:
    """`items` as rows of `response_items` (ITEM_COLUMNS)."""
    return [
        (stored.owner, item.id, stored.id, stored.created_at, item.item, item.size)
        for item in items
    ]
