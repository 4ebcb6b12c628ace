"""Usage records leave the request path at once and reach the store in batches.

`record` only appends to a bounded in-memory queue. A background task writes
a batch every `flush_interval_ms`, or as soon as `batch_size` records wait.
While the store is down, records stay queued and the batch is retried with
backoff; only beyond `max_pending` are new records dropped (counted, logged).
`drain` (at shutdown) writes everything left.

A record may come with a budget `Settlement`: kept beside it (records are written
positionally), handed to the store with its batch, which settles it in the same
transaction. Such a record is never dropped for `max_pending`: it is money a budget
counted, and the contract keeps settlements while the store is down. It is queued
beyond the bound (and counts toward it, so records without one give way first), up
to `max_pending` more; only past twice the bound is it dropped, counted and logged
as an error apart (its hold then runs out, and spend still equals the ledger, both
without it).
`flushed()` waits for every record queued before it, waking the batcher at once:
a budgeted caller sees its own spend on its next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from server.telemetry.metrics import Metrics
from server.usage.budget import Settlement
from server.usage.record import UsageRecord

__all__ = ["LedgerWriter", "UsageBatcher"]

logger = logging.getLogger("tandem.usage")

MAX_RETRY_DELAY_S = 5.0
OUTAGE_REMINDER_S = 60.0  # how often a long outage is logged again


class LedgerWriter(Protocol):
    async def write_usage(
        self, records: Sequence[UsageRecord], settlements: Sequence[Settlement] = ()
    ) -> None: ...


class UsageBatcher:
    def __init__(
        self,
        store: LedgerWriter,
        *,
        flush_interval_s: float,
        batch_size: int,
        max_pending: int,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._metrics = metrics
        # a multiprocess gauge cannot be read from a function at scrape time: it is set
        self._pending_gauge = self._metrics.usage_pending
        self._interval = flush_interval_s
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._pending: deque[UsageRecord] = deque()
        self._settlements: dict[str, Settlement] = {}  # by record id, for queued records
        self._queued = 0  # records ever queued (not dropped): each one's place in line
        self._written = 0  # of those, written (in order: the queue is FIFO)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()  # (place, future)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failures = 0  # consecutive failed writes: > 0 means the store is down
        self._outage_logged_at = 0.0
        self._dropped_unreported = 0
        self._settled_dropped = 0  # of those, with a budget settlement

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-batcher")

    def record(self, record: UsageRecord, settlement: Settlement | None = None) -> None:
        """Queue a record (and the budget settlement it carries); never blocks, never raises."""
        pending = self._pending
        if len(pending) >= self._max_pending and (
            settlement is None or len(pending) >= 2 * self._max_pending
        ):
            self._drop(settled=settlement is not None)
            return
        pending.append(record)
        self._queued += 1
        if settlement is not None:
            self._settlements[record.id] = settlement
        self._pending_gauge.set(len(pending))  # set, not read at scrape: see Metrics
        if len(pending) >= self._batch_size and not self._failures:
            self._wake.set()

    async def flushed(self) -> None:
        """Return once every record queued before this call is written; wakes the
        batcher at once (while the store is down, its retries keep their pace).
        Callers bound the wait; one cut short leaves the records queued."""
        place = self._queued
        if self._written >= place:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((place, future))
        if not self._failures:
            self._wake.set()
        await future

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Stop the background task and write every queued record, retrying
        within `timeout_s` if the store is down (writes are idempotent, so one
        cut off by the deadline is safe to have started)."""
        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                if self._task is not None:
                    await self._task
                while True:
                    if await self._write(everything=True):
                        return
                    await asyncio.sleep(self._retry_delay())
        except TimeoutError:
            if self._task is not None:
                self._task.cancel()
            logger.error(
                "usage store unavailable at shutdown: %d usage records lost", len(self._pending)
            )
        finally:
            self._wake_waiters(everyone=True)  # nothing more will be written

    async def _run(self) -> None:
        while not self._closing:
            delay = self._retry_delay() if self._failures else self._interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            if not self._closing:
                await self._write(everything=False)

    async def _write(self, *, everything: bool) -> bool:
        """Write queued records in batches; False if the store refused one.

        Without `everything`, a partial batch is written only as the first:
        the records that keep arriving wait for the next interval or a full batch.
        """
        pending = self._pending
        first = True
        while pending and (
            everything or first or len(pending) >= self._batch_size or self._awaited()
        ):
            first = False
            batch = list(itertools.islice(pending, self._batch_size))
            settled = self._settlements
            settlements = (
                [s for r in batch if (s := settled.get(r.id)) is not None] if settled else []
            )
            try:
                if settlements:
                    await self._store.write_usage(batch, settlements)
                else:
                    await self._store.write_usage(batch)
            except Exception as exc:  # any store failure means "keep the batch, retry later"
                self._failed(exc)
                return False
            for _ in batch:
                pending.popleft()
            for settlement in settlements:
                del settled[settlement.record_id]
            self._written += len(batch)
            self._wake_waiters()
            self._pending_gauge.set(len(pending))
            self._metrics.usage_written.inc(len(batch))
            if self._failures or self._dropped_unreported:
                self._recovered()
        return True

    def _awaited(self) -> bool:
        """Whether a `flushed()` caller waits for a record still queued."""
        return bool(self._waiters) and self._waiters[-1][0] > self._written

    def _wake_waiters(self, *, everyone: bool = False) -> None:
        waiters = self._waiters
        while waiters and (everyone or waiters[0][0] <= self._written):
            _, future = waiters.popleft()
            if not future.done():  # its caller may have stopped waiting
                future.set_result(None)

    def _retry_delay(self) -> float:
        return min(MAX_RETRY_DELAY_S, 0.25 * 2.0 ** min(self._failures, 8))

    def _failed(self, exc: Exception) -> None:
        self._metrics.usage_write_errors.inc()
        self._failures += 1
        now = time.monotonic()
        if self._failures == 1 or now - self._outage_logged_at >= OUTAGE_REMINDER_S:
            self._outage_logged_at = now
            logger.warning(
                "usage store unavailable (%s: %s); %d usage records wait in memory "
                "(at most %d are kept)",
                type(exc).__name__,
                exc,
                len(self._pending),
                self._max_pending,
            )

    def _recovered(self) -> None:
        logger.warning(
            "usage store is back after %d failed writes; %d records still to write, %d dropped "
            "(%d with budget settlements)",
            self._failures,
            len(self._pending),
            self._dropped_unreported,
            self._settled_dropped,
        )
        self._failures = 0
        self._dropped_unreported = 0
        self._settled_dropped = 0

    def _drop(self, *, settled: bool) -> None:
        self._metrics.usage_dropped.inc()
        self._dropped_unreported += 1
        if settled:  # past twice the bound: money a budget counted, said apart
            self._settled_dropped += 1
            if self._settled_dropped == 1:
                logger.error(
                    "dropping usage records with budget settlements: %d records wait for the "
                    "usage store (twice usage.max_pending); their spend is not counted",
                    len(self._pending),
                )
        elif self._dropped_unreported - self._settled_dropped == 1:
            logger.error(
                "dropping usage records: %d already wait for the usage store (usage.max_pending)",
                self._max_pending,
            )
