"""Expired stored responses removed in the background, never on a request's path.

A task of the gateway's (started and stopped with it) wakes every `INTERVAL_S`
and deletes expired rows `BATCH` at a time, until a batch comes back short or
`MAX_BATCHES` went: bounded work a round, each batch one short transaction (SQLite
has one writer). A failure is logged and retried next round; it fails no request,
and a read never returns an expired row anyway (a store down fails every round:
logged once, until a round passes). Every replica purges: a row is deleted once,
whoever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from server.store import ConversationStore

__all__ = ["Purger"]

logger = logging.getLogger("tandem.conversations")

INTERVAL_S = 5.0
BATCH = 500
MAX_BATCHES = 10  # a round: 5,000 rows at most, 1,000/s a replica
TIMEOUT_S = 5.0  # a batch


class Purger:
    def __init__(
        self,
        store: ConversationStore,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._interval_s = interval_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="purge-responses")

    async def stop(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def purge_once(self) -> int:
        """One round: how many rows went."""
        gone = 0
        for _ in range(MAX_BATCHES):
            async with asyncio.timeout(TIMEOUT_S):
                purged = await self._store.purge_responses(self._clock(), BATCH)
            gone += purged
            if purged < BATCH:
                break
        return gone

    async def _run(self) -> None:
        failing = False
        while True:
            try:
                await self.purge_once()
                failing = False
            except Exception as exc:  # the store's own errors, a timeout: next round
                log = logger.debug if failing else logger.warning
                log("purging expired responses failed (%s)", type(exc).__name__)
                failing = True
            await asyncio.sleep(self._interval_s)
