"""`responses: native` under a key's budget, on a live server: a relayed `/v1/responses`
call reserves its estimate (the request's prompt at the input price, its
`max_output_tokens` at the output price), is settled to the cost of the usage the
upstream reported (the recorded cost), and once the budget is spent the next call is
refused with 429 `budget_exceeded` before the upstream is asked.

`gpt-native` costs $1 per million input tokens and $2 per million output tokens; the
fake upstream (tests/fake_responses.py) reports `USAGE`: 41 input tokens (13 of them
cached, at the input price: the model's price names no cache price) and 29 output (17
of them reasoning, at the output price): 41 x 1,000 + 29 x 2,000 = 99,000 nanos a call.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from server.core.estimate import estimate_relayed_prompt
from tests.fake_responses import UPSTREAM_KEY, UPSTREAM_MODEL, USAGE, FakeResponsesUpstream
from tests.keys_in_store import bearer, key_with, write_keys
from tests.servers import TandemProcess, start_tandem

CONFIG = f"""
providers:
  - {{name: up, kind: openai, base_url: "%(url)s", api_key: "{UPSTREAM_KEY}", responses: native}}
models:
  - {{name: gpt-native, provider: up, upstream: "{UPSTREAM_MODEL}",
      price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
tiers:
  free: {{default_model: gpt-native}}
auth: {{required: true, key_cache_s: 0.5}}
usage: {{store: "sqlite:///usage.db", flush_interval_ms: 1000}}
"""

CALL_COST = USAGE["input_tokens"] * 1_000 + USAGE["output_tokens"] * 2_000
LIMIT = 250_000  # two calls fit (each reserving ~104,000); a third does not
BODY: dict[str, Any] = {"model": "gpt-native", "input": "a b c d", "max_output_tokens": 50}
RESERVED = estimate_relayed_prompt(BODY) * 1_000 + 50 * 2_000
KEY = key_with("relayer", budget_nanos=LIMIT, budget_period="monthly")


def usd(nanos: int) -> str:
    return format(Decimal(nanos).scaleb(-9).normalize(), "f")


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeResponsesUpstream]:
    with FakeResponsesUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeResponsesUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    directory = tmp_path_factory.mktemp("responses-budget")
    write_keys(f"sqlite:///{directory / 'usage.db'}", KEY[1])
    process = start_tandem(directory, CONFIG % {"url": upstream.base_url})
    yield process
    assert process.terminate() == 0, process.stderr()


def rows(gateway: TandemProcess, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(gateway.stderr_path.parent / "usage.db")) as db:
        return db.execute(sql, params).fetchall()


def test_a_relayed_call_reserves_settles_to_its_cost_and_is_refused_once_spent(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    assert 100_000 < RESERVED < CALL_COST + 10_000 < LIMIT - CALL_COST  # the arithmetic below
    url = f"{gateway.base_url}/v1/responses"
    scope = f"key:{KEY[1].id}:monthly"
    upstream.reset()

    whole = httpx.post(url, json=BODY, headers=bearer(KEY[0]))
    assert whole.status_code == 200, whole.text
    assert whole.json()["usage"]["input_tokens"] == USAGE["input_tokens"]
    # the answer's headers: its reservation, nothing spent yet
    assert whole.headers["x-budget-limit-usd"] == usd(LIMIT)
    assert whole.headers["x-budget-remaining-usd"] == usd(LIMIT - RESERVED)
    # its answer ends once it is settled: the reservation gone, the recorded cost spent
    assert rows(gateway, "SELECT cost_nanos FROM usage_records WHERE key_id = ?", KEY[1].id) == [
        (CALL_COST,)
    ]
    assert rows(
        gateway, "SELECT spent_nanos, reserved_nanos FROM budget_periods WHERE scope = ?", scope
    ) == [(CALL_COST, 0)]

    with httpx.stream("POST", url, json={**BODY, "stream": True}, headers=bearer(KEY[0])) as live:
        assert live.status_code == 200
        assert live.headers["x-budget-remaining-usd"] == usd(LIMIT - CALL_COST - RESERVED)
        text = live.read().decode()
    assert "response.completed" in text
    assert rows(
        gateway, "SELECT spent_nanos, reserved_nanos FROM budget_periods WHERE scope = ?", scope
    ) == [(2 * CALL_COST, 0)]

    refused = httpx.post(url, json=BODY, headers=bearer(KEY[0]))
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "budget_exceeded")
    assert refused.headers["x-should-retry"] == "false"
    assert "retry-after" in refused.headers
    assert refused.headers["x-budget-remaining-usd"] == usd(LIMIT - 2 * CALL_COST)
    assert len(upstream.requests) == 2  # the refused call never reached the upstream
    records = rows(
        gateway, "SELECT cost_nanos, cost_source FROM usage_records WHERE key_id = ?", KEY[1].id
    )
    assert records == [(CALL_COST, "priced")] * 2  # the refusal is no record, no spend
    assert rows(
        gateway, "SELECT spent_nanos, reserved_nanos FROM budget_periods WHERE scope = ?", scope
    ) == [(2 * CALL_COST, 0)]
