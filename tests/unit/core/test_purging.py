"""Expired stored responses are purged in the background, over a real SQLite store:
without any write, a bounded number of batches a round, and a failing round logged
and followed by the next."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.core import purging
from server.core.purging import Purger
from server.store import StoredResponse
from server.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(str(tmp_path / "usage.db"))
    yield opened
    await opened.aclose()


def expired(rid: str, expires_at: float = 10.0) -> StoredResponse:
    return StoredResponse(rid, "sub:a", 0.0, expires_at, None, 2, '{"output": []}', "[]", "[]")


async def test_a_round_purges_batches_until_one_is_short_and_no_more_than_its_bound(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(purging, "BATCH", 2)
    monkeypatch.setattr(purging, "MAX_BATCHES", 3)
    for n in range(7):
        await store.save_response(expired(f"resp_{n}"), [])
    await store.save_response(expired("resp_live", expires_at=1e12), [])
    purger = Purger(store, clock=lambda: 100.0)
    assert await purger.purge_once() == 6  # three full batches: the round ends
    assert await purger.purge_once() == 1
    assert await purger.purge_once() == 0
    assert await store.find_response("sub:a", "resp_live", 100.0) is not None


async def test_the_task_purges_without_writes_and_outlives_a_failure(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await store.save_response(expired("resp_old"), [])
    real = store.purge_responses
    rounds: list[str] = []
    purged = asyncio.Event()

    async def flaky(now: float, limit: int) -> int:
        if len(rounds) < 3:
            rounds.append("failed")
            raise OSError("database is locked")
        rounds.append("purged")
        gone = await real(now, limit)
        purged.set()
        return gone

    monkeypatch.setattr(store, "purge_responses", flaky)
    purger = Purger(store, interval_s=0.01, clock=lambda: 100.0)
    purger.start()
    try:
        async with asyncio.timeout(5):
            await purged.wait()
    finally:
        await purger.stop()
    assert await store.find_response("sub:a", "resp_old", 0.0) is None
    assert rounds[:4] == ["failed", "failed", "failed", "purged"]
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert [r.getMessage() for r in warned] == ["purging expired responses failed (OSError)"]
    await purger.stop()  # twice: nothing to do
