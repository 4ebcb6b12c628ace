"""The x-budget-* headers on every answer to a caller with a budget, not only those that
reserve one: model listings (`/v1/models`, `/native/v1/models`, gRPC ListModels), usage
reads, and errors after authentication (a 404 for an unknown model, a 400 for a bad
body; gRPC: trailers), on a live server. They read the budget without reserving: a
budget no call has reserved in yet reads as the ledger's spend, and the read makes no
row. A caller without a budget gets none of them.

Model `metered` costs $1 per million prompt tokens and $2 per million completion
tokens: a chat of `PROMPT` (4 tokens) with `max_tokens: 4` reserves and costs 12,000
nanos (tests/test_budget_admission.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import httpx
import pytest
from tandem.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

from server.store import open_store
from server.usage.record import UsageRecord
from tests.keys_in_store import bearer, key_with, write_keys
from tests.servers import TandemProcess, start_tandem

CALL_NANOS = 12_000
PROMPT = "a b c d"
LIMIT = 100_000
SPENT_BEFORE = 5_000  # in the ledger before the server starts: no budget row yet

CONFIG = """
providers: [{name: demo, kind: mock}]
models:
  - {name: metered, provider: demo, price: {input_per_mtok: 1, output_per_mtok: 2}}
tiers:
  free: {default_model: metered, requests_per_minute: 1000}
  capped: {default_model: metered, budget: {usd: 0.001, period: daily}}
auth: {required: true, key_cache_s: 0.5}
usage: {store: "sqlite:///budgets.db", flush_interval_ms: 1000}
"""

SPENDER = key_with("spender", budget_nanos=LIMIT, budget_period="monthly")
TIERED = key_with("tiered", "capped")  # the tier's daily $0.001, no rate limit
UNBUDGETED = key_with("unbudgeted")
BUDGET_HEADERS = ("x-budget-limit-usd", "x-budget-remaining-usd", "x-budget-reset")


def usd(nanos: int) -> str:
    return format(Decimal(nanos).scaleb(-9).normalize(), "f")


def _spent_before(store_url: str, key_id: str) -> None:
    """A record of the key's, this month, written before any budget row exists."""
    record = UsageRecord(
        uuid.uuid4().hex, "r", "spender", "metered", "demo", "http", 1, 1, "ok", 1.0, None,
        time.time_ns() // 1000, caller_kind="user", cost_nanos=SPENT_BEFORE, key_id=key_id,
        tier="free",
    )  # fmt: skip

    async def write() -> None:
        store = open_store(store_url)
        assert store is not None
        await store.open()
        try:
            await store.write_usage([record])
        finally:
            await store.aclose()

    asyncio.run(write())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TandemProcess]:
    directory = tmp_path_factory.mktemp("budget-headers")
    url = f"sqlite:///{directory / 'budgets.db'}"
    write_keys(url, *(record for _, record in (SPENDER, TIERED, UNBUDGETED)))
    _spent_before(url, SPENDER[1].id)
    process = start_tandem(directory, CONFIG)
    yield process
    assert process.terminate() == 0


def budget_rows(server: TandemProcess) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(server.stderr_path.parent / "budgets.db")) as db:
        return db.execute(
            "SELECT scope, spent_nanos, reserved_nanos FROM budget_periods"
        ).fetchall()


def http_answers(server: TandemProcess, secret: str) -> dict[str, httpx.Response]:
    """Every HTTP answer under test, by what it is."""
    auth = bearer(secret)
    base = server.base_url
    chat = f"{base}/v1/chat/completions"
    messages = [{"role": "user", "content": PROMPT}]
    return {
        "/v1/models": httpx.get(f"{base}/v1/models", headers=auth),
        "/native/v1/models": httpx.get(f"{base}/native/v1/models", headers=auth),
        "/native/v1/usage": httpx.get(f"{base}/native/v1/usage", headers=auth),
        "unknown model": httpx.post(
            chat, json={"model": "nope", "messages": messages}, headers=auth
        ),
        "bad body": httpx.post(
            chat, json={"model": "metered", "messages": messages, "max_tokens": -1}, headers=auth
        ),
    }


async def _grpc_answers(server: TandemProcess, secret: str) -> dict[str, dict[str, Any]]:
    """The trailers of every gRPC answer under test, by what it is."""
    metadata = tuple(bearer(secret).items())
    trailers: dict[str, dict[str, Any]] = {}
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        listing = models_pb2_grpc.ModelServiceStub(channel).ListModels(
            models_pb2.ListModelsRequest(), metadata=metadata
        )
        await listing
        trailers["ListModels"] = _pairs(await listing.trailing_metadata())
        usage = usage_pb2_grpc.UsageServiceStub(channel).GetUsage(
            usage_pb2.GetUsageRequest(), metadata=metadata
        )
        await usage
        trailers["GetUsage"] = _pairs(await usage.trailing_metadata())
        unknown = chat_pb2_grpc.ChatServiceStub(channel).CreateChatCompletion(
            chat_pb2.ChatCompletionRequest(
                model="nope", messages=[chat_pb2.ChatMessage(role="user", content=PROMPT)]
            ),
            metadata=metadata,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await unknown
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        trailers["unknown model"] = _pairs(refused.value.trailing_metadata())
    return trailers


def _pairs(metadata: Any) -> dict[str, Any]:
    return dict(metadata or ())


def grpc_answers(server: TandemProcess, secret: str) -> dict[str, dict[str, Any]]:
    return asyncio.run(_grpc_answers(server, secret))


def check_statuses(answers: dict[str, httpx.Response]) -> None:
    assert {what: answer.status_code for what, answer in answers.items()} == {
        "/v1/models": 200,
        "/native/v1/models": 200,
        "/native/v1/usage": 200,
        "unknown model": 404,
        "bad body": 400,
    }


def test_every_answer_to_a_budgeted_caller_says_its_budget(server: TandemProcess) -> None:
    secret = SPENDER[0]
    scope = f"key:{SPENDER[1].id}:monthly"
    # no call has reserved yet: the budget reads as the ledger's spend, and stays unwritten
    answers = http_answers(server, secret)
    check_statuses(answers)
    for what, answer in answers.items():
        assert answer.headers.get("x-budget-limit-usd") == usd(LIMIT), what
        assert answer.headers.get("x-budget-remaining-usd") == usd(LIMIT - SPENT_BEFORE), what
        assert "h" in answer.headers.get("x-budget-reset", ""), what  # a month's end: hours
    for what, trailers in grpc_answers(server, secret).items():
        assert trailers.get("x-budget-limit-usd") == usd(LIMIT), what
        assert trailers.get("x-budget-remaining-usd") == usd(LIMIT - SPENT_BEFORE), what
        assert "x-budget-reset" in trailers, what
    assert [row for row in budget_rows(server) if row[0] == scope] == []  # a read made none

    chat = httpx.post(
        f"{server.base_url}/native/v1/chat/completions",
        json={"model": "metered", "messages": [{"role": "user", "content": PROMPT}],
              "max_tokens": 4},
        headers=bearer(secret),
    )  # fmt: skip
    assert chat.status_code == 200, chat.text
    left = LIMIT - SPENT_BEFORE - CALL_NANOS
    assert chat.headers["x-budget-remaining-usd"] == usd(left)
    time.sleep(1.1)  # past the replica's recent view: the store is read again
    answers = http_answers(server, secret)
    check_statuses(answers)
    for what, answer in answers.items():
        assert answer.headers.get("x-budget-remaining-usd") == usd(left), what
    for what, trailers in grpc_answers(server, secret).items():
        assert trailers.get("x-budget-remaining-usd") == usd(left), what
    assert [row for row in budget_rows(server) if row[0] == scope] == [
        (scope, SPENT_BEFORE + CALL_NANOS, 0)
    ]


def test_a_tier_budget_without_rate_limits_says_its_budget_too(server: TandemProcess) -> None:
    """A caller whose tier has a budget and no rate limit (no admission at all for a
    listing before): the tier's daily budget, each caller's own."""
    answers = http_answers(server, TIERED[0])
    check_statuses(answers)
    for what, answer in answers.items():
        assert answer.headers.get("x-budget-limit-usd") == "0.001", what
        assert answer.headers.get("x-budget-remaining-usd") == "0.001", what
        assert "x-budget-reset" in answer.headers, what
    for what, trailers in grpc_answers(server, TIERED[0]).items():
        assert trailers.get("x-budget-remaining-usd") == "0.001", what


def test_a_caller_without_a_budget_gets_no_budget_headers(server: TandemProcess) -> None:
    answers = http_answers(server, UNBUDGETED[0])
    check_statuses(answers)
    for what, answer in answers.items():
        assert not [h for h in answer.headers if h.startswith("x-budget-")], what
        assert "x-ratelimit-limit-requests" in answer.headers, what  # its rate limits, as ever
    for what, trailers in grpc_answers(server, UNBUDGETED[0]).items():
        assert not [h for h in trailers if h.startswith("x-budget-")], what
