"""The usage ledger end to end: real gateways writing to a real SQLite file and to the
local PostgreSQL (a schema of its own), read back over HTTP and gRPC."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import openai
import orjson
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tandem.v1 import chat_pb2, chat_pb2_grpc, usage_pb2, usage_pb2_grpc

from server.store import open_store
from server.usage.record import UsageRecord
from tests.fake_upstream import FakeUpstream
from tests.servers import TandemProcess, start_tandem, usage_records
from tests.stores import pg_schema_url

SECRET = "u" * 40
ADMIN_KEY = "usage-admin-key-0123456789"
CONFIG = """
providers:
  - {name: demo, kind: mock}
  - {name: slow, kind: mock, chunk_delay_ms: 40}
  - {name: up, kind: openai, base_url: "%(upstream)s", api_key: k, max_retries: 0}
  - {name: up2, kind: openai, base_url: "%(upstream)s", api_key: k, max_retries: 0}
models:
  - {name: echo, provider: demo}
  - {name: slow-echo, provider: slow}
  - {name: relay, provider: up}
  - {name: relay-fb, provider: up, upstream: relay, fallbacks: [relay-b]}
  - {name: relay-b, provider: up2, upstream: relay}
tiers:
  free: {default_model: echo}
  tight: {default_model: echo, tokens_per_minute: 10}
auth:
  required: true
  jwt: {secret: "%(secret)s", algorithms: [HS256], audience: tandem}
  admin_keys: ["%(admin)s"]
usage: {store: "%(store)s", flush_interval_ms: 50}
"""


def token(user: str, tier: str | None = None) -> str:
    claims: dict[str, Any] = {"sub": user, "aud": "tandem", "exp": int(time.time()) + 600}
    if tier is not None:
        claims["tier"] = tier
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'usage.db'}"
    else:
        with pg_schema_url() as url:
            yield url


@pytest.fixture(scope="module")
def gateway(
    store_url: str, fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    config = CONFIG % {
        "upstream": fake.base_url,
        "secret": SECRET,
        "admin": ADMIN_KEY,
        "store": store_url,
    }
    process = start_tandem(tmp_path_factory.mktemp("usage"), config)
    yield process
    assert process.terminate() == 0, process.stderr()


def read_usage(
    gateway: TandemProcess, credential: str = ADMIN_KEY, **params: Any
) -> httpx.Response:
    return httpx.get(
        f"{gateway.base_url}/native/v1/usage", params=params, headers=bearer(credential)
    )


def records_of(gateway: TandemProcess, user: str, count: int) -> list[dict[str, Any]]:
    """The user's records once `count` are written (newest first)."""
    return usage_records(gateway, count, ADMIN_KEY, user=user, limit=1000)


def native_stream(gateway: TandemProcess, user: str, **fields: Any) -> list[str]:
    body = {"stream": True, "messages": [{"role": "user", "content": "one two three"}], **fields}
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/native/v1/chat/completions",
        json=body,
        headers=bearer(token(user)),
    ) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def test_every_door_and_kind_of_call_is_recorded_once(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    user = new_user()
    fake.reset()
    began = time.time()
    with openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=token(user), max_retries=0
    ) as sdk:
        plain = sdk.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "hello there"}]
        )
        sdk.embeddings.create(model="echo", input=["a b", "c"])
        relayed = sdk.chat.completions.create(
            model="relay", messages=[{"role": "user", "content": "x y z"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in relayed if c.choices) == "x y z"
    native_stream(gateway, user)
    with grpc.insecure_channel(gateway.grpc) as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        request = chat_pb2.ChatCompletionRequest(model="echo")
        request.messages.add(role="user", content="four five six seven")
        metadata = (("authorization", f"Bearer {token(user)}"), ("x-request-id", f"grpc-{user}"))
        chat.CreateChatCompletion(request, metadata=metadata)
        list(chat.StreamChatCompletion(request, metadata=metadata))
    ended = time.time()

    records = records_of(gateway, user, 6)
    # (protocol, model, streamed, embedding): one record each
    by_kind = {
        (r["protocol"], r["model"], r["ttft_ms"] is not None, r["completion_tokens"] == 0): r
        for r in records
    }
    assert len(by_kind) == 6, records
    for record in records:
        assert record["user"] == user
        assert record["status"] == "ok"
        assert record["total_tokens"] == record["prompt_tokens"] + record["completion_tokens"]
        assert 0 < record["latency_ms"] < (ended - began) * 1000
        created = datetime.fromisoformat(record["created_at"]).timestamp()
        assert began - 0.01 <= created <= ended + 0.01
        if record["ttft_ms"] is not None:
            assert 0 < record["ttft_ms"] <= record["latency_ms"]
    plain_record = by_kind["openai", "echo", False, False]
    assert plain_record["request_id"] == plain.headers["x-request-id"]
    assert (
        plain_record["provider"],
        plain_record["prompt_tokens"],
        plain_record["completion_tokens"],
    ) == ("demo", 2, 2)
    assert by_kind["openai", "echo", False, True]["prompt_tokens"] == 3  # the embeddings
    relay = by_kind["openai", "relay", True, False]
    # the upstream's own count (the fake says 7), not the gateway's estimate
    assert (relay["provider"], relay["prompt_tokens"], relay["completion_tokens"]) == ("up", 7, 3)
    assert by_kind["native", "echo", True, False]["completion_tokens"] == 3
    grpc_plain = by_kind["grpc", "echo", False, False]
    grpc_stream = by_kind["grpc", "echo", True, False]
    assert grpc_plain["request_id"] == grpc_stream["request_id"] == f"grpc-{user}"
    assert grpc_plain["prompt_tokens"] == grpc_stream["completion_tokens"] == 4
    # newest first
    assert [r["created_at"] for r in records] == sorted(
        (r["created_at"] for r in records), reverse=True
    )


def test_a_reused_request_id_is_two_records(gateway: TandemProcess) -> None:
    user = new_user()
    for _ in range(2):
        response = httpx.post(
            f"{gateway.base_url}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "again"}]},
            headers={**bearer(token(user)), "x-request-id": "same-id"},
        )
        assert response.status_code == 200
    assert [r["request_id"] for r in records_of(gateway, user, 2)] == ["same-id", "same-id"]


async def test_cancelled_streams_are_recorded_with_what_was_sent(gateway: TandemProcess) -> None:
    user = new_user()
    words = " ".join(f"w{i}" for i in range(50))
    body = {"model": "slow-echo", "stream": True, "messages": [{"role": "user", "content": words}]}
    async with (
        httpx.AsyncClient() as client,
        client.stream(
            "POST",
            f"{gateway.base_url}/native/v1/chat/completions",
            json=body,
            headers=bearer(token(user)),
        ) as response,
    ):
        seen = 0
        async for line in response.aiter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        request = chat_pb2.ChatCompletionRequest(model="slow-echo")
        request.messages.add(role="user", content=words)
        call = chat_pb2_grpc.ChatServiceStub(channel).StreamChatCompletion(
            request, metadata=(("authorization", f"Bearer {token(user)}"),)
        )
        for _ in range(3):
            await call.read()
        call.cancel()

    records = await asyncio.to_thread(records_of, gateway, user, 2)
    assert {r["protocol"] for r in records} == {"native", "grpc"}
    for record in records:
        assert record["status"] == "cancelled"
        assert record["prompt_tokens"] == 50
        assert 3 <= record["completion_tokens"] < 10  # what was sent, not the whole answer
        assert record["ttft_ms"] is not None


def test_failed_requests_are_recorded_with_their_error(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    user = new_user()
    fake.reset("500", "errormid")
    with openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key=token(user), max_retries=0
    ) as sdk:
        with pytest.raises(openai.APIStatusError) as refused:
            sdk.chat.completions.create(
                model="relay", messages=[{"role": "user", "content": "a b"}]
            )
        assert refused.value.status_code == 502
    lines = native_stream(
        gateway, user, model="relay", messages=[{"role": "user", "content": "a b c d e"}]
    )
    assert orjson.loads(lines[-1].removeprefix("data: "))["error"]["type"] == "upstream_error"

    before_first_chunk, mid_stream = sorted(
        records_of(gateway, user, 2), key=lambda r: r["completion_tokens"]
    )
    assert before_first_chunk["status"] == mid_stream["status"] == "error:upstream_error"
    assert before_first_chunk["provider"] == "up"
    assert (before_first_chunk["prompt_tokens"], before_first_chunk["completion_tokens"]) == (0, 0)
    # two words reached the client before the upstream failed: those are charged
    assert (mid_stream["prompt_tokens"], mid_stream["completion_tokens"]) == (5, 2)


def test_the_provider_recorded_is_the_last_one_tried(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    user = new_user()
    url = f"{gateway.base_url}/native/v1/chat/completions"
    body = {"model": "relay-fb", "messages": [{"role": "user", "content": "a b"}]}
    fake.reset("500")  # the primary fails, the fallback serves
    assert httpx.post(url, json=body, headers=bearer(token(user))).status_code == 200
    [served] = records_of(gateway, user, 1)
    fake.reset("500", "503")  # both fail
    assert httpx.post(url, json=body, headers=bearer(token(user))).status_code == 502
    failed, _ = records_of(gateway, user, 2)
    assert (served["model"], served["provider"], served["status"]) == ("relay-fb", "up2", "ok")
    assert (failed["provider"], failed["status"]) == ("up2", "error:upstream_error")


def test_rate_limits_after_admission(gateway: TandemProcess, fake: FakeUpstream) -> None:
    """Admitted calls are recorded with what they really used, even past the budget;
    a call refused at admission reached no provider and is not; an upstream's own 429
    after admission is a failed call, recorded."""
    user = new_user()
    fake.reset("429:1")
    url = f"{gateway.base_url}/native/v1/chat/completions"
    headers = bearer(token(user, tier="tight"))  # 10 tokens a minute
    eight = {"model": "echo", "messages": [{"role": "user", "content": "1 2 3 4 5 6 7 8"}]}
    admitted = httpx.post(url, json=eight, headers=headers)
    assert admitted.status_code == 200  # reserved 8 of 10, then used 16
    refused = httpx.post(url, json=eight, headers=headers)
    assert refused.status_code == 429

    other = new_user()
    upstream_limited = httpx.post(
        url,
        json={"model": "relay", "messages": [{"role": "user", "content": "hi"}]},
        headers=bearer(token(other)),
    )
    assert upstream_limited.status_code == 502

    [record] = records_of(gateway, user, 1)
    assert (record["status"], record["prompt_tokens"], record["completion_tokens"]) == ("ok", 8, 8)
    assert record["request_id"] == admitted.headers["x-request-id"]
    [limited] = records_of(gateway, other, 1)
    assert (limited["status"], limited["provider"]) == ("error:upstream_error", "up")


def test_the_usage_api_shows_callers_their_own_and_admins_everything(
    gateway: TandemProcess,
) -> None:
    alice, bob = new_user(), new_user()
    url = f"{gateway.base_url}/native/v1/chat/completions"
    for user, model, text in (
        (alice, "echo", "a"),
        (alice, "echo", "b c"),
        (bob, "slow-echo", "d"),
    ):
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        assert httpx.post(url, json=body, headers=bearer(token(user))).status_code == 200
    records_of(gateway, alice, 2)
    records_of(gateway, bob, 1)

    own = read_usage(gateway, token(alice))
    assert own.status_code == 200
    assert {r["user"] for r in own.json()["records"]} == {alice}
    assert own.json()["totals"] == {
        "requests": 2,
        "prompt_tokens": 3,
        "completion_tokens": 3,
        "total_tokens": 6,
        "cost_nanos": 0,  # a mock model without a price
        "cost_usd": 0,
    }
    assert {(r["cost_nanos"], r["cost_usd"], r["cost_source"]) for r in own.json()["records"]} == {
        (0, 0, "unpriced")
    }
    assert read_usage(gateway, token(alice), user=alice).status_code == 200
    denied = read_usage(gateway, token(alice), user=bob)
    assert denied.status_code == 403
    assert denied.json()["error"]["type"] == "permission_error"
    assert httpx.get(f"{gateway.base_url}/native/v1/usage").status_code == 401

    # admin filters: model, limit (totals still cover every match), since/until
    assert len(read_usage(gateway, model="slow-echo", user=bob).json()["records"]) == 1
    assert read_usage(gateway, model="echo", user=bob).json()["totals"]["requests"] == 0
    page = read_usage(gateway, user=alice, limit=1).json()
    assert len(page["records"]) == 1
    assert page["totals"]["requests"] == 2
    newest = page["records"][0]["created_at"]
    assert [
        r["created_at"] for r in read_usage(gateway, user=alice, since=newest).json()["records"]
    ] == [newest]
    older = read_usage(gateway, user=alice, until=newest).json()["records"]
    assert len(older) == 1
    assert older[0]["created_at"] < newest
    everyone = read_usage(gateway, limit=1000).json()["records"]
    assert {alice, bob} <= {r["user"] for r in everyone}

    for params, param in (
        ({"limit": 0}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"since": "May"}, "since"),
        ({"offset": 1}, "offset"),
        ({"since": "2026-01-31"}, "since"),  # a date, not an RFC 3339 time
        ({"until": "0001-01-01T00:00:00+01:00"}, "until"),  # before year 1 in UTC
    ):
        bad = read_usage(gateway, **params)
        assert bad.status_code == 400, params
        assert bad.json()["error"]["param"] == param

    with grpc.insecure_channel(gateway.grpc) as channel:
        usage = usage_pb2_grpc.UsageServiceStub(channel)
        mine = usage.GetUsage(
            usage_pb2.GetUsageRequest(), metadata=(("authorization", f"Bearer {token(bob)}"),)
        )
        assert [r.user for r in mine.records] == [bob]
        assert mine.records[0].created_at.ToSeconds() > 0
        assert not mine.records[0].HasField("ttft_ms")
        with pytest.raises(grpc.RpcError) as refused:
            usage.GetUsage(
                usage_pb2.GetUsageRequest(user=alice),
                metadata=(("authorization", f"Bearer {token(bob)}"),),
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        since = Timestamp()
        since.FromDatetime(datetime.fromisoformat(newest).astimezone(UTC))
        admin = (("authorization", f"Bearer {ADMIN_KEY}"),)
        filtered = usage.GetUsage(
            usage_pb2.GetUsageRequest(user=alice, since=since), metadata=admin
        )
        assert len(filtered.records) == 1
        assert filtered.totals.requests == 1
        # a record's own time, as sent, finds it (since) and leaves it out (until)
        exact = usage.GetUsage(usage_pb2.GetUsageRequest(user=alice), metadata=admin)
        oldest = exact.records[-1]
        since_oldest = usage.GetUsage(
            usage_pb2.GetUsageRequest(user=alice, since=oldest.created_at), metadata=admin
        )
        assert since_oldest.totals.requests == 2
        until_oldest = usage.GetUsage(
            usage_pb2.GetUsageRequest(user=alice, until=oldest.created_at), metadata=admin
        )
        assert until_oldest.totals.requests == 0
        assert exact.records[0].created_at.ToMicroseconds() == since.ToMicroseconds()
        with pytest.raises(grpc.RpcError) as invalid:
            usage.GetUsage(usage_pb2.GetUsageRequest(limit=1001), metadata=admin)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_usage_store_none_records_nothing(tmp_path: Path) -> None:
    process = start_tandem(tmp_path, "usage: {store: none}\n")
    try:
        answer = httpx.post(
            f"{process.base_url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
        assert answer.status_code == 200
        usage = httpx.get(f"{process.base_url}/native/v1/usage")
        assert usage.status_code == 404
        assert "usage.store: none" in usage.json()["error"]["message"]
        assert not list(tmp_path.glob("*.db"))
    finally:
        assert process.terminate() == 0


def test_the_usage_api_reports_each_records_cost_and_sums_it_exactly(
    gateway: TandemProcess, store_url: str
) -> None:
    """Costs as the ledger holds them, in nanos and as exact dollars (HTTP), per record and
    summed by the database, over both doors; written here through the store itself."""
    user = new_user()
    now = time.time_ns() // 1000
    # (cost_nanos, cost_source): a dollar amount no float holds, and an unpriced call
    costs = [(1_200_000, "priced"), (123_456_789_012_345_678, "priced"), (0, "unpriced")]
    written = [
        UsageRecord(
            id=f"{user}-{n}",
            request_id=f"cost-{n}",
            user=user,
            model="echo",
            provider="demo",
            protocol="openai",
            prompt_tokens=10 + n,
            completion_tokens=5,
            status="ok",
            latency_ms=1.0,
            ttft_ms=None,
            created_at=now + n,
            cost_nanos=nanos,
            cost_source=source,
            key_id="k1",
            tier="free",
        )
        for n, (nanos, source) in enumerate(costs)
    ]

    async def write() -> None:
        store = open_store(store_url)
        assert store is not None
        try:
            await store.write_usage(written)
        finally:
            await store.aclose()

    asyncio.run(write())
    records_of(gateway, user, 3)
    answer = read_usage(gateway, token(user))
    exact = json.loads(answer.text, parse_float=Decimal)  # orjson would read floats
    assert [
        (r["request_id"], r["cost_nanos"], r["cost_usd"], r["cost_source"])
        for r in exact["records"]
    ] == [
        ("cost-2", 0, 0, "unpriced"),
        ("cost-1", 123_456_789_012_345_678, Decimal("123456789.012345678"), "priced"),
        ("cost-0", 1_200_000, Decimal("0.0012"), "priced"),
    ]
    total = 123_456_789_013_545_678
    assert exact["totals"]["cost_nanos"] == total
    assert exact["totals"]["cost_usd"] == Decimal("123456789.013545678")
    assert '"cost_usd":123456789.013545678}' in answer.text
    one = read_usage(gateway, token(user), limit=1).json()["totals"]
    assert (one["requests"], one["cost_nanos"]) == (3, total)  # every match, not the page

    with grpc.insecure_channel(gateway.grpc) as channel:
        usage = usage_pb2_grpc.UsageServiceStub(channel)
        got = usage.GetUsage(
            usage_pb2.GetUsageRequest(), metadata=(("authorization", f"Bearer {token(user)}"),)
        )
    assert [(r.cost_nanos, r.cost_source) for r in got.records] == [
        (0, "unpriced"),
        (123_456_789_012_345_678, "priced"),
        (1_200_000, "priced"),
    ]
    assert (got.totals.requests, got.totals.cost_nanos) == (3, total)
