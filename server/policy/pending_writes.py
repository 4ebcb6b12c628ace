"""Writes to the shared limiter that must land, in order, even across a blip.

A settlement (a reservation corrected to what a call used) or a slot's
release is queued here and sent in batches by one task, in the order the
calls ended. A batch the backend does not take is kept at the head of the
queue and sent again every `RETRY_S`, so it lands within that long of the
backend answering again; writes queued meanwhile wait behind it, keeping
the order. A write older than `MAX_AGE_S` is dropped: by then the bucket
has refilled (and a slot's lease has expired) anyway, so it no longer
matters. At `MAX_PENDING` the oldest write is dropped for the newest, for
the same reason. At exit, `drain` keeps trying until the queue is empty or
its time is up; what is left is dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from server.policy.limiter import WINDOW_S, LimiterEvents

__all__ = ["MAX_AGE_S", "MAX_PENDING", "RETRY_S", "PendingWrites", "Write"]

logger = logging.getLogger("tandem.limits")

RETRY_S = 1.0
MAX_AGE_S = WINDOW_S  # a bucket refills in a minute; a slot's lease is shorter
MAX_PENDING = 100_000  # ~20 MB of writes at most; a minute of 1,600 calls a second
BATCH = 500  # writes per round trip


class Write(NamedTuple):
    op: str  # "s": settle a tokens bucket by `value` us; "r": release slot `value`
    key: str
    value: str
    at: float  # when the call ended (monotonic)
    seq: int


Send = Callable[[list[Write]], Awaitable[bool]]  # True: applied; False: backend unreachable


class PendingWrites:
    def __init__(
        self,
        send: Send,
        events: LimiterEvents,
        *,
        retry_s: float = RETRY_S,
        max_age_s: float = MAX_AGE_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._send = send
        self._events = events
        self._retry_s = retry_s
        self._max_age_s = max_age_s
        self._max_pending = max_pending
        self._queue: deque[Write] = deque()
        self._deferred = 0  # writes at the head of the queue that failed at least once
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, op: str, key: str, value: str) -> None:
        if len(self._queue) >= self._max_pending:
            self._drop(1)
        self._queue.append(Write(op, key, value, time.monotonic(), next(self._seq)))
        self._wake.set()
        if self._task is None or self._task.done():  # started, or after a bug ended it
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._task.add_done_callback(_said)

    async def drain(self, timeout_s: float) -> None:
        """Send what is queued, trying until `timeout_s` has passed; drop the rest."""
        deadline = time.monotonic() + timeout_s
        while self._queue and self._task is not None and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._queue:
            logger.warning(
                "rate limits: %d settlements could not reach Redis before exit; dropped",
                len(self._queue),
            )
            self._drop(len(self._queue))

    async def _run(self) -> None:
        queue = self._queue
        while True:
            await self._wake.wait()
            self._wake.clear()
            while queue:
                stale = 0
                cutoff = time.monotonic() - self._max_age_s
                while stale < len(queue) and queue[stale].at < cutoff:
                    stale += 1
                self._drop(stale)
                if not queue:
                    break
                batch = list(itertools.islice(queue, BATCH))
                if not await self._send(batch):
                    fresh = max(len(batch) - self._deferred, 0)
                    if fresh:
                        self._events.settlement_deferred(fresh)
                    self._deferred = max(self._deferred, len(batch))
                    await asyncio.sleep(self._retry_s)
                    continue
                last = batch[-1].seq
                applied = 0
                while queue and queue[0].seq <= last:  # some may have been dropped meanwhile
                    queue.popleft()
                    applied += 1
                late = min(self._deferred, applied)
                if late:
                    self._deferred -= late
                    self._events.settlement_applied_late(late)

    def _drop(self, count: int) -> None:
        if not count:
            return
        for _ in range(count):
            self._queue.popleft()
        self._deferred = max(self._deferred - count, 0)
        self._events.settlement_dropped(count)


def _said(task: asyncio.Task[None]) -> None:
    """A writer that ended other than by `drain` hit a bug: log it (the next write
    starts another)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("rate limits: the settlement writer failed", exc_info=exc)
