"""Several OS processes on one store at once (tests/budget_reserver.py): together they
admit exactly what fits, and settlements racing the rows being made still leave spend
equal to the ledger (SQLite file and the local PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.budget_reserver import Job
from tests.budget_state import ledger_cost, open_holds, period_state

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 3


def run_together(jobs: list[Job]) -> list[int]:
    """Each job in a process of its own, started together; what each admitted."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.budget_reserver", json.dumps(job._asdict())],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        for job in jobs
    ]
    admitted = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        admitted.append(int(out))
    return admitted


async def test_processes_reserving_at_once_admit_exactly_what_fits(store_url: str) -> None:
    start_at = time.time() + 1.0  # after every process has imported and connected
    job = Job(store_url, ["shared"], limit=2_000, nanos=100, rounds=12, start_at=start_at)
    admitted = run_together([job] * PROCESSES)
    assert sum(admitted) == 20  # of 36 asked: the limit, not a nano past it
    assert await period_state(store_url, "key:shared:total", 0) == (0, 2_000)
    assert await open_holds(store_url) == 20


async def test_settlements_racing_new_rows_leave_spend_equal_to_the_ledger(
    store_url: str,
) -> None:
    keys = [f"race{i}" for i in range(20)]  # each key's row is made while others settle
    start_at = time.time() + 1.0
    jobs = [
        Job(store_url, keys[i:] + keys[:i], 10**9, 100, len(keys) * 2, start_at, cost=37 + i)
        for i in range(PROCESSES)
    ]
    run_together(jobs)
    for key_id in keys:
        spent = await ledger_cost(store_url, key_id)
        assert spent > 0
        assert await period_state(store_url, f"key:{key_id}:total", 0) == (spent, 0), key_id
    assert await open_holds(store_url) == 0
