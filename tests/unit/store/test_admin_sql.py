"""The admin API's SQL on both stores (a fresh SQLite file, a fresh PostgreSQL schema):
spend grouped and summed by the database equals the same sums folded in Python over
the records written; keys paged after the last one seen, ties on `created_at` broken
by id; an update sets the columns it names and no other."""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from server.store import ApiKey, Store, open_store
from server.store.keys_sql import KeyPage
from server.store.spend_sql import GROUPS, SpendQuery, SpendRow
from server.usage.record import UsageRecord

DAY_US = 86_400_000_000
START_US = int(datetime(2026, 2, 27, tzinfo=UTC).timestamp() * 1_000_000)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = open_store(store_url)
    assert opened is not None
    await opened.open()
    yield opened
    await opened.aclose()


def _records(rng: random.Random, count: int) -> list[UsageRecord]:
    return [
        UsageRecord(
            id=uuid.UUID(int=rng.getrandbits(128)).hex,
            request_id="r",
            user=rng.choice(["ann", "bob", "cy"]),
            model=rng.choice(["echo", "premium"]),
            provider="demo",
            protocol="native",
            prompt_tokens=rng.randrange(0, 5000),
            completion_tokens=rng.randrange(0, 5000),
            status="ok",
            latency_ms=1.0,
            ttft_ms=None,
            # four UTC days, and every record's microsecond on either side of midnight
            created_at=START_US + rng.randrange(0, 4 * DAY_US),
            cost_nanos=rng.choice([0, 1, rng.randrange(0, 2**40)]),
            key_id=rng.choice([None, "aaaaaaaaaaaa", "bbbbbbbbbbbb"]),
        )
        for _ in range(count)
    ]


def _group_of(record: UsageRecord, group_by: str) -> str:
    if group_by == "day":
        return datetime.fromtimestamp(record.created_at / 1_000_000, UTC).strftime("%Y-%m-%d")
    if group_by == "key":
        return record.key_id or ""
    return str(getattr(record, group_by))


def _fold(records: list[UsageRecord], group: str = "") -> SpendRow:
    return SpendRow(
        group,
        len(records),
        sum(r.prompt_tokens for r in records),
        sum(r.completion_tokens for r in records),
        sum(r.cost_nanos for r in records),
    )


async def test_spend_is_what_python_folds_of_the_same_records(store: Store) -> None:
    rng = random.Random(27)
    records = _records(rng, 300)
    # a record a microsecond each side of a midnight: two days
    midnight = START_US + 2 * DAY_US
    records += [
        records[0]._replace(id="before-midnight", created_at=midnight - 1),
        records[0]._replace(id="at-midnight", created_at=midnight),
    ]
    await store.write_usage(records)
    for group_by in GROUPS:
        for query in (
            SpendQuery(group_by=group_by),
            SpendQuery(group_by=group_by, user="bob", model="premium"),
            SpendQuery(
                group_by=group_by, key_id="aaaaaaaaaaaa", since=midnight, until=midnight + 7
            ),
        ):
            chosen = [
                r
                for r in records
                if (query.user is None or r.user == query.user)
                and (query.model is None or r.model == query.model)
                and (query.key_id is None or r.key_id == query.key_id)
                and (query.since is None or r.created_at >= query.since)
                and (query.until is None or r.created_at < query.until)
            ]
            groups: dict[str, list[UsageRecord]] = defaultdict(list)
            for record in chosen:
                groups[_group_of(record, group_by)].append(record)
            expected = sorted(
                (_fold(rows, name) for name, rows in groups.items()),
                key=lambda row: (-row.cost_nanos, row.group),
            )
            report = await store.spend(query)
            assert report.groups == expected, query
            assert report.totals == _fold(chosen), query
    no_groups = await store.spend(SpendQuery(user="cy"))
    assert no_groups.groups == []
    assert no_groups.totals == _fold([r for r in records if r.user == "cy"])


async def test_keys_page_in_order_ties_broken_by_id(store: Store) -> None:
    made = [
        ApiKey(
            id=f"{i:012x}",
            key_hash="h",
            user="u" if i % 3 else "v",
            tier="free" if i % 2 else "gold",
            created_at=100.0 + i // 4,  # four keys share each instant
        )
        for i in range(13)
    ]
    for key in reversed(made):
        await store.create_key(key)
    for user, tier in ((None, None), ("u", None), ("u", "free"), (None, "gold")):
        expected = [k.id for k in made if user in (None, k.user) and tier in (None, k.tier)]
        seen: list[str] = []
        after = None
        while True:
            page = await store.list_keys_page(KeyPage(user=user, tier=tier, after=after, limit=2))
            seen += [k.id for k in page[:2]]
            if len(page) <= 2:
                break
            after = (page[1].created_at, page[1].id)
        assert seen == expected, (user, tier)


async def test_an_update_sets_what_it_names_and_nothing_else(store: Store) -> None:
    key = ApiKey(
        id="0123456789ab",
        key_hash="h",
        user="u",
        tier="free",
        created_at=1.0,
        requests_per_minute=5,
        labels={"a": "b"},
    )
    await store.create_key(key)
    updated = await store.update_key(
        key.id, {"models": (), "budget_nanos": 7, "budget_period": "daily"}, at=2.0
    )
    assert updated is not None
    assert (updated.models, updated.budget_nanos, updated.budget_period) == ((), 7, "daily")
    assert (updated.requests_per_minute, updated.labels, updated.updated_at) == (5, {"a": "b"}, 2.0)
    cleared = await store.update_key(key.id, {"models": None, "labels": {}}, at=3.0)
    assert cleared is not None
    assert (cleared.models, cleared.labels, cleared.budget_nanos) == (None, {}, 7)
    assert await store.find_key(key.id) == cleared
    assert await store.update_key("ffffffffffff", {"labels": {}}, at=4.0) is None
    with pytest.raises(ValueError, match="not updatable"):
        await store.update_key(key.id, {"user": "x"}, at=5.0)
