"""The usage ledger: the core hands every finished call here, off the hot path.

`record` never blocks the request: the batcher queues it and writes batches
to the store (`server.store`); `NullRecorder` is `usage.store: none`.
"""

from __future__ import annotations

from typing import Protocol

from server.usage.batcher import UsageBatcher
from server.usage.budget import Settlement
from server.usage.record import UsagePage, UsageQuery, UsageRecord, UsageTotals

__all__ = [
    "NullRecorder",
    "UsageBatcher",
    "UsagePage",
    "UsageQuery",
    "UsageRecord",
    "UsageRecorder",
    "UsageTotals",
]


class UsageRecorder(Protocol):
    def record(self, record: UsageRecord, settlement: Settlement | None = None) -> None: ...

    async def flushed(self) -> None:
        """Return once every record queued before the call is written (a budgeted
        caller then sees its own spend); wakes the writer at once."""

    async def drain(self) -> None: ...


class NullRecorder:
    """Records nothing (`usage.store: none`)."""

    def record(self, record: UsageRecord, settlement: Settlement | None = None) -> None:
        return None

    async def flushed(self) -> None:
        return None

    async def drain(self) -> None:
        return None
