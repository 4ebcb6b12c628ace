"""The conversation store's SQL, on both stores (a fresh SQLite file, a fresh PostgreSQL
schema): kept, found by its owner only, chained (a cycle read to a bounded depth), its
items kept and read by id in one query each, deleted once, expired rows never read and
purged a bounded batch at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.store import Store, StoredItem, StoredResponse, open_store
from server.store.conversations import MAX_CHAIN_DEPTH, ChainLink


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    assert opened is not None
    await opened.open()
    yield opened
    await opened.aclose()


def stored(
    rid: str,
    *,
    owner: str = "sub:a",
    at: float = 100.0,
    ttl: float = 50.0,
    previous: str | None = None,
) -> StoredResponse:
    return StoredResponse(
        id=rid,
        owner=owner,
        created_at=at,
        expires_at=at + ttl,
        previous_id=previous,
        chain_bytes=10,
        response=f'{{"id": "{rid}", "output": []}}',
        input="[]",
        splits="[[1, 2]]",
        output=f'[{{"id": "msg_{rid}"}}]',
    )


def items(*ids: str) -> list[StoredItem]:
    """Items of those ids, each `{"id": ...}`."""
    return [StoredItem(i, f'{{"id": "{i}"}}', len(i) + 10) for i in ids]


async def find_item(store: Store, owner: str, item_id: str, now: float) -> tuple[str, str] | None:
    """The response keeping `owner`'s newest live item of that id, and the item."""
    sizes = await store.item_sizes(owner, [item_id], now)
    if item_id not in sizes:
        return None
    response, _ = sizes[item_id]
    return response, (await store.load_items(owner, [(response, item_id)]))[item_id]


async def test_a_response_is_found_by_its_owner_only_until_it_expires(store: Store) -> None:
    kept = stored("resp_1")
    await store.save_response(kept, [])
    assert await store.find_response("sub:a", "resp_1", 120.0) == kept
    assert await store.find_response("sub:b", "resp_1", 120.0) is None
    assert await store.find_response("sub:a", "resp_1", 150.0) is None  # expired
    assert await store.find_response("sub:a", "resp_2", 120.0) is None


async def test_a_chain_is_read_oldest_first_and_ends_at_a_missing_link(store: Store) -> None:
    await store.save_response(stored("resp_1", at=100), [])
    await store.save_response(stored("resp_2", at=101, previous="resp_1"), [])
    await store.save_response(stored("resp_3", at=102, previous="resp_2"), [])
    chain = await store.response_chain("sub:a", "resp_3", 120.0)
    assert [r.id for r in chain] == ["resp_1", "resp_2", "resp_3"]
    # each link its input and output only: not the settings its response echoes
    assert chain[1] == ChainLink("resp_2", "resp_1", "[]", '[{"id": "msg_resp_2"}]')
    assert await store.response_chain("sub:b", "resp_3", 120.0) == []
    assert await store.delete_response("sub:a", "resp_2", 120.0)
    assert [r.id for r in await store.response_chain("sub:a", "resp_3", 120.0)] == ["resp_3"]
    # resp_1 expires first (150): the chain from resp_3 (live till 152) stops there
    await store.save_response(stored("resp_4", at=103, previous="resp_1"), [])
    assert [r.id for r in await store.response_chain("sub:a", "resp_4", 151.0)] == ["resp_4"]


async def test_an_item_is_found_by_its_id_in_the_owners_newest_response(store: Store) -> None:
    await store.save_response(stored("resp_1", at=100), items("msg_x", "fc_y"))
    await store.save_response(stored("resp_2", at=101), items("msg_x"))
    assert await find_item(store, "sub:a", "msg_x", 120.0) == ("resp_2", '{"id": "msg_x"}')
    assert await find_item(store, "sub:a", "fc_y", 120.0) == ("resp_1", '{"id": "fc_y"}')
    assert await find_item(store, "sub:b", "msg_x", 120.0) is None
    assert await find_item(store, "sub:a", "msg_x", 200.0) is None


async def test_many_items_are_sized_in_one_query_and_read_in_another(store: Store) -> None:
    await store.save_response(stored("resp_1", at=100), items("a", "b"))
    await store.save_response(stored("resp_2", at=101), items("b", "c"))
    sizes = await store.item_sizes("sub:a", ["a", "b", "c", "nope"], 120.0)
    assert sizes == {"a": ("resp_1", 11), "b": ("resp_2", 11), "c": ("resp_2", 11)}
    found = await store.load_items("sub:a", [(r, i) for i, (r, _) in sizes.items()])
    assert found == {i: f'{{"id": "{i}"}}' for i in "abc"}
    assert await store.load_items("sub:b", [("resp_1", "a")]) == {}  # another owner's
    assert await store.item_sizes("sub:a", [], 120.0) == {}
    assert await store.load_items("sub:a", []) == {}


async def test_a_cycle_a_corrupt_row_makes_is_read_to_a_bounded_depth(store: Store) -> None:
    await store.save_response(stored("resp_a", previous="resp_b"), [])
    await store.save_response(stored("resp_b", previous="resp_a"), [])
    chain = await store.response_chain("sub:a", "resp_a", 120.0)
    assert len(chain) == MAX_CHAIN_DEPTH + 1
    assert chain[0].previous_id is not None  # it reads as cut: the service refuses it


async def test_a_delete_is_the_owners_and_happens_once(store: Store) -> None:
    await store.save_response(stored("resp_1"), items("msg_x"))
    assert not await store.delete_response("sub:b", "resp_1", 120.0)
    assert await find_item(store, "sub:a", "msg_x", 120.0) is not None  # untouched
    assert await store.delete_response("sub:a", "resp_1", 120.0)
    assert not await store.delete_response("sub:a", "resp_1", 120.0)
    assert await find_item(store, "sub:a", "msg_x", 120.0) is None
    await store.save_response(stored("resp_2"), [])
    assert not await store.delete_response("sub:a", "resp_2", 200.0)  # expired: not found


async def test_expired_responses_are_purged_a_bounded_batch_at_a_time(store: Store) -> None:
    for n in range(5):
        await store.save_response(stored(f"resp_{n}", at=100 + n, ttl=10), items(f"msg_{n}"))
    await store.save_response(stored("resp_live", at=100, ttl=1000), items("msg_live"))
    assert await store.purge_responses(200.0, 3) == 3
    assert await store.purge_responses(200.0, 3) == 2
    assert await store.purge_responses(200.0, 3) == 0
    assert await store.find_response("sub:a", "resp_live", 200.0) is not None
    assert await find_item(store, "sub:a", "msg_live", 200.0) is not None


async def test_the_tables_are_made_at_open_and_kept_at_reopen(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'usage.db'}"
    first = open_store(url)
    assert first is not None
    await first.save_response(stored("resp_1"), [])
    await first.aclose()
    second = open_store(url)
    assert second is not None
    assert await second.find_response("sub:a", "resp_1", 120.0) is not None
    await second.aclose()
