"""The queue of settlements kept while Redis is away, with a scripted backend: kept in
order, dropped when too old or past the bound, a writer ended by a bug started again
(Redis itself going away: tests/test_settlements_outage.py)."""

from __future__ import annotations

from collections.abc import Callable

from server.policy.limiter import LimiterEvents
from server.policy.pending_writes import PendingWrites, Write
from tests.eventually import eventually_async


class _Backend:
    def __init__(self) -> None:
        self.up = True
        self.applied: list[str] = []

    async def send(self, writes: list[Write]) -> bool:
        if self.up:
            self.applied += [w.value for w in writes]
        return self.up


class _Counts:
    def __init__(self) -> None:
        self.deferred = self.late = self.dropped = 0

    def events(self) -> LimiterEvents:
        def add(name: str) -> Callable[[int], None]:
            def count(n: int) -> None:
                setattr(self, name, getattr(self, name) + n)

            return count

        return LimiterEvents(
            settlement_deferred=add("deferred"),
            settlement_applied_late=add("late"),
            settlement_dropped=add("dropped"),
        )


async def _until(condition: Callable[[], bool]) -> None:
    async def check() -> bool:
        return condition()

    await eventually_async(check)


async def test_kept_writes_are_applied_in_order_once_the_backend_answers() -> None:
    backend, counts = _Backend(), _Counts()
    writes = PendingWrites(backend.send, counts.events(), retry_s=0.05)
    backend.up = False
    for value in "abc":
        writes.add("s", "k", value)
    await _until(lambda: counts.deferred == 3)
    writes.add("s", "k", "d")  # queued behind the kept ones
    backend.up = True
    await _until(lambda: backend.applied == ["a", "b", "c", "d"])
    assert (counts.late, counts.dropped, len(writes)) == (3, 0, 0)
    await writes.drain(1.0)


async def test_writes_older_than_a_minute_or_past_the_bound_are_dropped_and_counted() -> None:
    backend, counts = _Backend(), _Counts()
    writes = PendingWrites(backend.send, counts.events(), retry_s=0.05, max_pending=3)
    backend.up = False
    for value in "abcd":  # the bound keeps the newest three
        writes.add("s", "k", value)
    assert counts.dropped == 1
    backend.up = True
    await _until(lambda: backend.applied == ["b", "c", "d"])

    aged = PendingWrites(backend.send, counts.events(), retry_s=0.05, max_age_s=0.0)
    backend.up, backend.applied = False, []
    aged.add("s", "k", "old")
    await _until(lambda: counts.dropped == 2)  # too old to matter: given up
    backend.up = True
    await aged.drain(1.0)
    await writes.drain(1.0)
    assert backend.applied == []


async def test_a_writer_ended_by_a_bug_is_started_again_by_the_next_write() -> None:
    backend, counts = _Backend(), _Counts()
    writes = PendingWrites(backend.send, counts.events(), retry_s=0.05)
    send, failed = backend.send, list[list[Write]]()

    async def fails_once(batch: list[Write]) -> bool:
        if not failed:
            failed.append(batch)
            raise RuntimeError("a bug")
        return await send(batch)

    writes._send = fails_once
    writes.add("s", "k", "a")
    await _until(lambda: bool(failed))
    writes.add("s", "k", "b")
    await _until(lambda: backend.applied == ["a", "b"])
    await writes.drain(1.0)
