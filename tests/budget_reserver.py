"""One OS process of a test's several, reserving from (and settling into) one store at
once: `python -m tests.budget_reserver '<json>'` prints how many reservations it got.

The JSON: `url` (a `usage.store`), `keys` (the key ids whose `total` budgets it uses,
one scope each, limit `limit`), `rounds`, `nanos` (each reservation), `start_at` (a
wall-clock moment all processes wait for, so they contend), and `cost`: if set, each
admitted reservation is settled at once with a ledger record of that cost, and every
other round writes a record with a settlement but no hold (reserved while the store was
down), so settlements meet rows being made.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import NamedTuple

from server.store import open_store
from server.usage.budget import BudgetScope, LedgerFilter, Settlement
from server.usage.record import UsageRecord


def key_scope(key_id: str, limit: int) -> BudgetScope:
    return BudgetScope(f"key:{key_id}:total", "total", 0, None, limit, LedgerFilter(key_id=key_id))


def key_record(record_id: str, key_id: str, cost: int) -> UsageRecord:
    now = time.time_ns() // 1000
    return UsageRecord(
        record_id, "r", "u", "m", "p", "grpc", 1, 1, "ok", 1.0, None, now,
        cost_nanos=cost, key_id=key_id, tier="free",
    )  # fmt: skip


class Job(NamedTuple):
    url: str
    keys: list[str]
    limit: int
    nanos: int
    rounds: int
    start_at: float
    cost: int | None = None


async def main(job: Job) -> int:
    store = open_store(job.url)
    assert store is not None
    await store.open()
    admitted = 0
    await asyncio.sleep(max(0.0, job.start_at - time.time()))
    try:
        for i in range(job.rounds):
            key_id = job.keys[i % len(job.keys)]
            scope = key_scope(key_id, job.limit)
            record_id = uuid.uuid4().hex
            if job.cost is not None and i % 2:
                settle = True  # reserved while the store was down: no hold, spend only
            else:
                found = await store.reserve_budget(record_id, [scope], job.nanos, 30.0)
                admitted += found.admitted
                settle = found.admitted
            if settle and job.cost is not None:
                settlement = Settlement(record_id, job.cost, ((scope.name, 0),))
                await store.write_usage([key_record(record_id, key_id, job.cost)], [settlement])
    finally:
        await store.aclose()
    return admitted


if __name__ == "__main__":
    print(asyncio.run(main(Job(**json.loads(sys.argv[1])))))
