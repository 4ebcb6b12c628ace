"""The conversation store's SQL, on both stores (a fresh SQLite file, a fresh PostgreSQL
schema): kept, found by its owner only, chained, its items indexed, deleted once,
expired rows never read and purged a bounded batch at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.store import Store, StoredResponse, open_store


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
    )


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
    assert await store.response_chain("sub:b", "resp_3", 120.0) == []
    assert await store.delete_response("sub:a", "resp_2", 120.0)
    assert [r.id for r in await store.response_chain("sub:a", "resp_3", 120.0)] == ["resp_3"]
    # resp_1 expires first (150): the chain from resp_3 (live till 152) stops there
    await store.save_response(stored("resp_4", at=103, previous="resp_1"), [])
    assert [r.id for r in await store.response_chain("sub:a", "resp_4", 151.0)] == ["resp_4"]


async def test_an_item_is_found_by_its_id_in_the_owners_newest_response(store: Store) -> None:
    await store.save_response(stored("resp_1", at=100), ["msg_x", "fc_y"])
    await store.save_response(stored("resp_2", at=101), ["msg_x"])
    found = await store.find_item("sub:a", "msg_x", 120.0)
    assert found is not None
    assert found.id == "resp_2"
    found = await store.find_item("sub:a", "fc_y", 120.0)
    assert found is not None
    assert found.id == "resp_1"
    assert await store.find_item("sub:b", "msg_x", 120.0) is None
    assert await store.find_item("sub:a", "msg_x", 200.0) is None


async def test_a_delete_is_the_owners_and_happens_once(store: Store) -> None:
    await store.save_response(stored("resp_1"), ["msg_x"])
    assert not await store.delete_response("sub:b", "resp_1", 120.0)
    assert await store.find_item("sub:a", "msg_x", 120.0) is not None  # untouched
    assert await store.delete_response("sub:a", "resp_1", 120.0)
    assert not await store.delete_response("sub:a", "resp_1", 120.0)
    assert await store.find_item("sub:a", "msg_x", 120.0) is None
    await store.save_response(stored("resp_2"), [])
    assert not await store.delete_response("sub:a", "resp_2", 200.0)  # expired: not found


async def test_expired_responses_are_purged_a_bounded_batch_at_a_time(store: Store) -> None:
    for n in range(5):
        await store.save_response(stored(f"resp_{n}", at=100 + n, ttl=10), [f"msg_{n}"])
    await store.save_response(stored("resp_live", at=100, ttl=1000), ["msg_live"])
    assert await store.purge_responses(200.0, 3) == 3
    assert await store.purge_responses(200.0, 3) == 2
    assert await store.purge_responses(200.0, 3) == 0
    assert await store.find_response("sub:a", "resp_live", 200.0) is not None
    assert await store.find_item("sub:a", "msg_live", 200.0) is not None


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
