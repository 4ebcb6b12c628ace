"""One budget, three `tandem serve` replicas on one PostgreSQL (a schema of this test's):
concurrent callers on every replica never admit past it, and restarting every replica
keeps what was spent.

A call reserves exactly what it costs (tests/test_budget_admission.py: 12,000 nanos), so a
budget of 50 calls admits exactly 50, however the calls interleave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.keys_in_store import bearer, key_with, write_keys
from tests.servers import TandemProcess, start_tandem
from tests.stores import pg_schema_url

pytestmark = pytest.mark.timeout(240)

REPLICAS = 3
CALL_NANOS = 12_000
CALLS = 50  # what the budget holds
# calls in flight at once on each replica, all reserving one scope: 90 at once queue on
# the store (its pool, the scope's row lock) far past a quarter second on a loaded
# machine. A slow store is not a down one: each waits its turn (Budgets' TIMEOUT_S),
# where it used to fall back to admitting offline (30-32 of 90 where 17 fit) and a fresh
# replica's first burst got 503 budget_store_unavailable
IN_FLIGHT = 30
CONFIG = """
providers: [{name: demo, kind: mock}]
models: [{name: metered, provider: demo, price: {input_per_mtok: 1, output_per_mtok: 2}}]
tiers:
  free: {default_model: metered}
auth: {required: true, key_cache_s: 1}
usage: {store: "%(store)s", flush_interval_ms: 100}
telemetry: {access_log: false}
"""
BODY = {"model": "metered", "messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 4}


@pytest.fixture
def store() -> Iterator[str]:
    with pg_schema_url() as url:
        yield url


async def _fire(replicas: list[TandemProcess], secret: str, count: int) -> list[httpx.Response]:
    """`count` calls spread over the replicas, IN_FLIGHT at once on each."""
    clients = [httpx.AsyncClient(base_url=r.base_url, timeout=30) for r in replicas]
    gates = [asyncio.Semaphore(IN_FLIGHT) for _ in replicas]

    async def call(i: int) -> httpx.Response:
        async with gates[i % len(gates)]:
            client = clients[i % len(clients)]
            return await client.post("/v1/chat/completions", json=BODY, headers=bearer(secret))

    try:
        return list(await asyncio.gather(*(call(i) for i in range(count))))
    finally:
        for client in clients:
            await client.aclose()


def _admitted(answers: list[httpx.Response]) -> int:
    for answer in answers:
        if answer.status_code != 200:
            assert answer.status_code == 429, answer.text
            assert answer.json()["error"]["code"] == "budget_exceeded"
    return sum(answer.status_code == 200 for answer in answers)


async def _ledger(url: str, key_id: str) -> tuple[Any, ...]:
    connection = await asyncpg.connect(url)
    try:
        records = await connection.fetchrow(
            "SELECT count(*), COALESCE(sum(cost_nanos), 0) FROM usage_records WHERE key_id = $1",
            key_id,
        )
        period = await connection.fetchrow(
            "SELECT spent_nanos, reserved_nanos FROM budget_periods WHERE scope = $1",
            f"key:{key_id}:monthly",
        )
        return (*records, *period)
    finally:
        await connection.close()


def test_replicas_never_admit_past_a_budget_and_a_restart_keeps_the_spend(
    tmp_path: Path, store: str
) -> None:
    secret, record = key_with("shared", budget_nanos=CALLS * CALL_NANOS)
    write_keys(store, record)
    config = CONFIG % {"store": store}
    replicas = [start_tandem(tmp_path, config) for _ in range(REPLICAS)]
    try:
        # fresh replicas, their pools cold, never read the budget: a burst at once
        assert _admitted(asyncio.run(_fire(replicas, secret, 30))) == 30
        for replica in replicas:  # SIGTERM: their records flushed, their holds settled
            assert replica.terminate() == 0
        replicas = [start_tandem(tmp_path, config) for _ in range(REPLICAS)]
        # the spend was kept: of 90 concurrent calls on fresh replicas, exactly the 20 left fit
        assert _admitted(asyncio.run(_fire(replicas, secret, 90))) == CALLS - 30
        assert asyncio.run(_ledger(store, record.id)) == (
            CALLS,
            CALLS * CALL_NANOS,
            CALLS * CALL_NANOS,
            0,
        )
    finally:
        for replica in replicas:
            replica.kill()
