"""Budgets on a live server, over HTTP (native and the openai SDK) and gRPC: a budget
admits exactly what fits, then refuses with 429 `budget_exceeded`; its headers say what
is left; a tier's budget is each caller's own; unpriced models under `budgets.unpriced:
deny`; a `total` budget never resets.

Costs are exact: model `metered` costs $1 per million prompt tokens and $2 per million
completion tokens (1,000 and 2,000 nanos a token). A call of `PROMPT` (4 words of 7 bytes: 4 tokens
estimated, 4 counted by the mock) with `max_tokens: 4` (echoed back: 4 completion
tokens) reserves 4 x 1,000 + 4 x 2,000 = 12,000 nanos and costs as much.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import grpc
import httpx
import jwt
import openai
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.eventually import eventually
from tests.keys_in_store import bearer, key_with, write_keys
from tests.rpc_status import details_of
from tests.servers import TandemProcess, start_tandem

JWT_SECRET = "budgets-test-secret-of-32-bytes!!"
CALL_NANOS = 12_000
PROMPT = "a b c d"

CONFIG = """
providers: [{name: demo, kind: mock}, {name: slow, kind: mock, chunk_delay_ms: 50}]
models:
  - {name: metered, provider: demo, price: {input_per_mtok: 1, output_per_mtok: 2}}
  - {name: free-text, provider: demo}
  - {name: slow-metered, provider: slow, price: {input_per_mtok: 1, output_per_mtok: 2}}
tiers:
  free: {default_model: metered}
  metered: {default_model: metered, budget: {usd: 0.000024, period: daily}}
auth:
  required: true
  key_cache_s: 0.5
  jwt: {secret: "%(jwt_secret)s", require_exp: false}
usage: {store: "sqlite:///budgets.db", flush_interval_ms: 1000}
budgets: {unpriced: deny}
"""

MONTHLY = key_with("monthly", budget_nanos=5 * CALL_NANOS, budget_period="monthly")
TOTAL = key_with("total", budget_nanos=CALL_NANOS, budget_period="total")
FIRST = key_with("first", "metered")  # the tier's budget: 2 calls a day each
SECOND = key_with("second", "metered")
BOTH = key_with("both", "metered", budget_nanos=5 * CALL_NANOS)  # key 5, tier 2: the tier's
UNBUDGETED = key_with("unbudgeted")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TandemProcess]:
    directory = tmp_path_factory.mktemp("budget-admission")
    keys = (MONTHLY, TOTAL, FIRST, SECOND, BOTH, UNBUDGETED)
    write_keys(f"sqlite:///{directory / 'budgets.db'}", *(record for _, record in keys))
    process = start_tandem(directory, CONFIG % {"jwt_secret": JWT_SECRET})
    yield process
    assert process.terminate() == 0


def body(model: str = "metered", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4}


def native(server: TandemProcess, secret: str, model: str = "metered") -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/native/v1/chat/completions", json=body(model), headers=bearer(secret)
    )


def sdk(server: TandemProcess, secret: str) -> Any:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=secret, max_retries=0) as client:
        return client.chat.completions.with_raw_response.create(
            model="metered", messages=[{"role": "user", "content": PROMPT}], max_tokens=4
        )


async def _grpc(server: TandemProcess, secret: str) -> tuple[grpc.StatusCode, dict[str, Any], Any]:
    """(code, trailers, the error if any) of one gRPC chat."""
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        request = chat_pb2.ChatCompletionRequest(
            model="metered",
            messages=[chat_pb2.ChatMessage(role="user", content=PROMPT)],
            max_tokens=4,
        )
        call = stub.CreateChatCompletion(request, metadata=tuple(bearer(secret).items()))
        try:
            await call
        except grpc.aio.AioRpcError as error:
            return error.code(), dict(error.trailing_metadata() or ()), error
        return grpc.StatusCode.OK, dict(await call.trailing_metadata() or ()), None


def grpc_chat(server: TandemProcess, secret: str) -> tuple[grpc.StatusCode, dict[str, Any], Any]:
    return asyncio.run(_grpc(server, secret))


def usd(nanos: int) -> str:
    return format(Decimal(nanos).scaleb(-9).normalize(), "f")


def seconds_to_next_month() -> float:
    now = datetime.now(UTC)
    first = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return (first - now).total_seconds()


def ledger(server: TandemProcess, sql: str, *params: Any) -> tuple[Any, ...]:
    """One row of the server's SQLite store, read directly."""
    with contextlib.closing(sqlite3.connect(server.stderr_path.parent / "budgets.db")) as db:
        row: tuple[Any, ...] = db.execute(sql, params).fetchone()
        return row


def metric(server: TandemProcess, series: str) -> float:
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_key_budget_admits_exactly_what_fits_then_refuses(server: TandemProcess) -> None:
    secret = MONTHLY[0]
    limit = usd(5 * CALL_NANOS)
    answers: list[Any] = []
    for n in range(5):  # every door in turn, each seeing the spend of the one before
        if n % 3 == 0:
            answer = native(server, secret)
            assert answer.status_code == 200, answer.text
            headers: Any = answer.headers
        elif n % 3 == 1:
            raw = sdk(server, secret)
            assert raw.http_response.status_code == 200
            headers = raw.http_response.headers
        else:
            code, headers, _ = grpc_chat(server, secret)
            assert code == grpc.StatusCode.OK
        answers.append(headers)
        assert headers["x-budget-limit-usd"] == limit
        assert headers["x-budget-remaining-usd"] == usd((4 - n) * CALL_NANOS)
        reset = headers["x-budget-reset"]
        assert reset.endswith("s")
        assert "h" in reset  # a month's end is hours away, whatever the day

    refused = native(server, secret)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "budget_exceeded"
    assert refused.headers["x-should-retry"] == "false"
    retry_after = int(refused.headers["retry-after"])
    assert abs(retry_after - math.ceil(seconds_to_next_month())) <= 2
    assert refused.headers["x-budget-limit-usd"] == limit
    assert refused.headers["x-budget-remaining-usd"] == "0"

    with pytest.raises(openai.RateLimitError) as sdk_refused:
        sdk(server, secret)
    assert sdk_refused.value.code == "budget_exceeded"
    assert sdk_refused.value.response.headers["x-should-retry"] == "false"

    code, trailers, grpc_error = grpc_chat(server, secret)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = details_of(grpc_error)
    assert details.error_info is not None
    assert details.error_info.reason == "rate_limit_error"
    assert details.error_info.metadata["code"] == "budget_exceeded"
    assert details.retry_info is not None
    assert abs(details.retry_info.retry_delay.seconds - seconds_to_next_month()) <= 2
    assert trailers["x-budget-remaining-usd"] == "0"

    assert metric(server, 'tandem_budget_exceeded_total{tier="free"}') >= 3
    assert metric(server, 'tandem_rate_limited_total{tier="free"}') >= 3
    # the ledger: every admitted call, at its exact cost, under its key; the budget's
    # spend is the ledger's
    assert ledger(
        server,
        "SELECT count(*), sum(cost_nanos) FROM usage_records WHERE key_id = ?",
        MONTHLY[1].id,
    ) == (5, 5 * CALL_NANOS)
    assert ledger(
        server,
        "SELECT spent_nanos, reserved_nanos FROM budget_periods WHERE scope = ?",
        f"key:{MONTHLY[1].id}:monthly",
    ) == (5 * CALL_NANOS, 0)


def test_a_tier_budget_is_each_callers_own(server: TandemProcess) -> None:
    for secret in (FIRST[0], SECOND[0]):
        statuses = [native(server, secret).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
    refused = native(server, FIRST[0])
    assert refused.json()["error"]["code"] == "budget_exceeded"
    now = datetime.now(UTC)
    to_midnight = 86_400 - (now.hour * 3600 + now.minute * 60 + now.second)
    assert abs(int(refused.headers["retry-after"]) - to_midnight) <= 2
    assert refused.headers["x-budget-limit-usd"] == usd(2 * CALL_NANOS)


def test_a_tier_budget_is_each_jwt_subjects_own(server: TandemProcess) -> None:
    tokens = [
        jwt.encode({"sub": user, "tier": "metered"}, JWT_SECRET, algorithm="HS256")
        for user in ("carol", "dave")
    ]
    for token in tokens:
        answers = [native(server, token) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[1].headers["x-budget-remaining-usd"] == "0"
        assert answers[2].json()["error"]["code"] == "budget_exceeded"


def test_a_key_and_its_tier_budget_both_apply(server: TandemProcess) -> None:
    first = native(server, BOTH[0])
    # the tier's (2 calls) has the least remaining: its figures are the ones shown
    assert first.headers["x-budget-limit-usd"] == usd(2 * CALL_NANOS)
    assert first.headers["x-budget-remaining-usd"] == usd(CALL_NANOS)
    assert [native(server, BOTH[0]).status_code for _ in range(2)] == [200, 429]


def test_a_total_budget_never_resets(server: TandemProcess) -> None:
    admitted = native(server, TOTAL[0])
    assert admitted.status_code == 200
    assert admitted.headers["x-budget-remaining-usd"] == "0"
    assert "x-budget-reset" not in admitted.headers
    refused = native(server, TOTAL[0])
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert "retry-after" not in refused.headers
    assert "x-budget-reset" not in refused.headers
    assert refused.headers["x-should-retry"] == "false"
    code, trailers, error = grpc_chat(server, TOTAL[0])
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details_of(error).retry_info is None
    assert "x-budget-reset" not in trailers


def test_unpriced_models_are_refused_under_a_budget_when_denied(server: TandemProcess) -> None:
    refused = native(server, MONTHLY[0], "free-text")
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    assert native(server, UNBUDGETED[0], "free-text").status_code == 200  # no budget: allowed


def test_calls_without_a_budget_carry_no_budget_headers(server: TandemProcess) -> None:
    answer = native(server, UNBUDGETED[0])
    assert answer.status_code == 200
    assert not [name for name in answer.headers if name.startswith("x-budget-")]


@pytest.mark.parametrize("stream", [False, True])
def test_a_sequential_caller_sees_its_own_spend(server: TandemProcess, stream: bool) -> None:
    """Read-your-writes: a call's answer ends once its cost is settled, not a flush
    interval (1 s here) later. Asking for 8 tokens reserves 20,000 nanos and costs 12,000
    (4 are echoed): in a budget of 32,000 a second call fits only once the first is
    settled (12,000 spent + 20,000), never while its reservation stands (40,000)."""
    secret, record = key_with(f"sequential-{stream}", budget_nanos=32_000)
    directory = server.stderr_path.parent
    write_keys(f"sqlite:///{directory / 'budgets.db'}", record)
    time.sleep(0.6)  # past key_cache_s: the new id is read on its first call
    first = {**body(), "max_tokens": 8, "stream": stream}
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=first, headers=bearer(secret)
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["x-budget-remaining-usd"] == usd(12_000)
        answer.read()
    second = httpx.post(
        f"{server.base_url}/native/v1/chat/completions",
        json={**body(), "max_tokens": 8},
        headers=bearer(secret),
    )
    assert second.status_code == 200, second.text
    assert second.headers["x-budget-remaining-usd"] == "0"


def test_a_grpc_stream_ends_once_its_cost_is_settled(server: TandemProcess) -> None:
    """As the sequential test, on a gRPC stream: its status (and trailers) come once
    its record is written."""
    secret, record = key_with("grpc-stream", budget_nanos=32_000)
    directory = server.stderr_path.parent
    write_keys(f"sqlite:///{directory / 'budgets.db'}", record)
    time.sleep(0.6)  # past key_cache_s

    async def stream() -> dict[str, Any]:
        async with grpc.aio.insecure_channel(server.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            request = chat_pb2.ChatCompletionRequest(
                model="metered",
                messages=[chat_pb2.ChatMessage(role="user", content=PROMPT)],
                max_tokens=8,
            )
            call = stub.StreamChatCompletion(request, metadata=tuple(bearer(secret).items()))
            async for _ in call:
                pass
            return dict(await call.trailing_metadata() or ())

    trailers = asyncio.run(stream())
    assert trailers["x-budget-remaining-usd"] == usd(12_000)
    second = native(server, secret)  # 12,000 spent + 12,000 fits only once settled
    assert second.status_code == 200, second.text
    assert second.headers["x-budget-remaining-usd"] == usd(32_000 - 24_000)


def test_a_caller_gone_mid_stream_is_settled_at_what_it_was_charged(
    server: TandemProcess,
) -> None:
    """The hold of a stream its caller left is settled to the record's cost (the prompt
    and what was sent), nothing left reserved."""
    secret, record = key_with("leaver", budget_nanos=1_000_000)
    directory = server.stderr_path.parent
    write_keys(f"sqlite:///{directory / 'budgets.db'}", record)
    time.sleep(0.6)  # past key_cache_s
    request = {
        "model": "slow-metered",
        "stream": True,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "w " * 100}],  # 5 s of chunks
    }
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=request, headers=bearer(secret)
    ) as answer:
        assert answer.status_code == 200
        # 100 prompt tokens and 100 to come reserved: 100 x 1,000 + 100 x 2,000
        assert answer.headers["x-budget-remaining-usd"] == usd(1_000_000 - 300_000)
        lines = answer.iter_lines()
        for _ in range(6):  # a few words, then the caller goes away
            next(lines)
    scope = f"key:{record.id}:monthly"

    def settled() -> tuple[Any, ...] | None:
        row = ledger(
            server,
            "SELECT p.spent_nanos, p.reserved_nanos, r.cost_nanos, r.status "
            "FROM budget_periods p, usage_records r WHERE p.scope = ? AND r.key_id = ?",
            scope,
            record.id,
        )
        return row if row is not None and row[1] == 0 else None

    spent, reserved, cost, status = eventually(settled, 10.0, what="the hold settled")
    assert status == "cancelled"
    assert reserved == 0
    assert spent == cost
    assert 100_000 < cost < 300_000  # the prompt, and some of the answer
