"""What each request cost, on a live server: priced from the tokens it recorded at the
model that served, as of its arrival, and shown the same everywhere it is reported (the
usage API's records and totals over HTTP and gRPC, the access log, `/metrics`); a model
without a price costs 0, `unpriced`. A model priced by genai-prices costs, to the nano,
what genai-prices' own `calc_price` says of the recorded tokens."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import grpc
import httpx
import jwt
import pytest
from genai_prices import Usage, calc_price
from tandem.v1 import chat_pb2, chat_pb2_grpc, usage_pb2, usage_pb2_grpc

from tests.eventually import eventually
from tests.scripted_upstream import ScriptedUpstream, Turn
from tests.servers import TandemProcess, start_tandem, usage_records

SECRET = "c" * 40
ADMIN_KEY = "costs-admin-key-0123456789"
CONFIG = """
providers:
  - {name: demo, kind: mock}
  - {name: up, kind: openai, base_url: "%(base)s", api_key: k, max_retries: 0,
     price_provider: openai}
  - {name: claude, kind: anthropic, base_url: "%(root)s", api_key: k, max_retries: 0,
     price_provider: anthropic}
  - {name: gone, kind: openai, base_url: "http://127.0.0.1:1/v1", api_key: k, max_retries: 0}
  - {name: pplx, kind: openai, base_url: "%(base)s", api_key: k, max_retries: 0,
     price_provider: perplexity}
models:
  - {name: echo, provider: demo}
  - name: priced-echo
    provider: demo
    price: {input_per_mtok: "2.5", output_per_mtok: 10, cached_input_per_mtok: "1.25"}
  - {name: mini, provider: up, upstream: gpt-4o-mini}
  - {name: thinker, provider: up, upstream: o4-mini}
  - {name: haiku, provider: claude, upstream: claude-haiku-4-5}
  - {name: searcher, provider: pplx, upstream: sonar}  # $12 per thousand calls, and tokens
  # asked for at OpenAI's gpt-4o-mini price, served by its fallback at its own
  - {name: first, provider: gone, upstream: gpt-4o-mini, fallbacks: [second]}
  - {name: second, provider: up, price: {input_per_mtok: 1, output_per_mtok: 2}}
tiers:
  free: {default_model: echo}
auth:
  required: true
  jwt: {secret: "%(secret)s", algorithms: [HS256]}
  admin_keys: ["%(admin)s"]
usage: {store: "sqlite:///usage.db", flush_interval_ms: 20}
telemetry: {access_log: true}
"""
# OpenAI's usage with cached prompt tokens and reasoning tokens among the completion's
OPENAI_USAGE = {
    "prompt_tokens": 12_345,
    "completion_tokens": 2_345,
    "total_tokens": 14_690,
    "prompt_tokens_details": {"cached_tokens": 8_000},
    "completion_tokens_details": {"reasoning_tokens": 1_500},
}
# Anthropic's: input without the cache, its reads and writes apart
ANTHROPIC_USAGE = {
    "input_tokens": 1_003,
    "cache_read_input_tokens": 8_000,
    "cache_creation_input_tokens": 3_000,
    "output_tokens": 507,
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as served:
        yield served


@pytest.fixture(scope="module")
def gateway(
    upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    config = CONFIG % {
        "base": upstream.base_url,
        "root": upstream.root,
        "secret": SECRET,
        "admin": ADMIN_KEY,
    }
    process = start_tandem(tmp_path_factory.mktemp("costs"), config)
    yield process
    assert process.terminate() == 0, process.stderr()


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def bearer(user: str) -> dict[str, str]:
    claims = {"sub": user, "exp": int(time.time()) + 600}
    return {"authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def exact(response: httpx.Response) -> Any:
    """A JSON body with its numbers as Decimals: what `cost_usd` says, exactly."""
    return json.loads(response.text, parse_float=Decimal)


def access_line(gateway: TandemProcess, request_id: str) -> Any:
    def written() -> Any:
        for line in gateway.stderr().splitlines():
            parsed = json.loads(line, parse_float=Decimal)
            if parsed.get("event") == "request" and parsed["request_id"] == request_id:
                return parsed
        return None

    return eventually(written, what=f"the access line of {request_id}")


def spent(gateway: TandemProcess, model: str) -> float | None:
    """`tandem_cost_usd_total{model}` as a scrape shows it (None: not there)."""
    for line in httpx.get(f"{gateway.base_url}/metrics").text.splitlines():
        if line.startswith(f'tandem_cost_usd_total{{model="{model}"}} '):
            return float(line.rpartition(" ")[2])
    return None


def test_a_priced_call_shows_its_cost_in_the_ledger_the_access_log_and_the_metrics(
    gateway: TandemProcess,
) -> None:
    user = new_user()
    before = spent(gateway, "priced-echo") or 0.0
    chat = f"{gateway.base_url}/v1/chat/completions"
    # the mock counts a token a word, each way: 3 x $2.5 + 3 x $10 per million
    priced = httpx.post(
        chat,
        json={"model": "priced-echo", "messages": [{"role": "user", "content": "one two three"}]},
        headers=bearer(user),
    )
    assert priced.status_code == 200
    unpriced = httpx.post(
        chat,
        json={"model": "echo", "messages": [{"role": "user", "content": "a b"}]},
        headers=bearer(user),
    )
    assert unpriced.status_code == 200
    with grpc.insecure_channel(gateway.grpc) as channel:
        request = chat_pb2.ChatCompletionRequest(model="priced-echo")
        request.messages.add(role="user", content="four five six seven")  # 4 x 2.5 + 4 x 10
        metadata = (*bearer(user).items(), ("x-request-id", f"grpc-{user}"))
        streamed = list(
            chat_pb2_grpc.ChatServiceStub(channel).StreamChatCompletion(request, metadata=metadata)
        )
        assert streamed[-1].usage.completion_tokens == 4

    records = usage_records(gateway, 3, ADMIN_KEY, user=user)
    assert [(r["model"], r["cost_nanos"], r["cost_source"]) for r in records] == [
        ("priced-echo", 50_000, "priced"),
        ("echo", 0, "unpriced"),
        ("priced-echo", 37_500, "priced"),
    ]
    body = exact(httpx.get(f"{gateway.base_url}/native/v1/usage", headers=bearer(user)))
    assert [r["cost_usd"] for r in body["records"]] == [
        Decimal("0.00005"),
        0,
        Decimal("0.0000375"),
    ]
    assert (body["totals"]["cost_nanos"], body["totals"]["cost_usd"]) == (
        87_500,
        Decimal("0.0000875"),
    )
    with grpc.insecure_channel(gateway.grpc) as channel:
        usage = usage_pb2_grpc.UsageServiceStub(channel).GetUsage(
            usage_pb2.GetUsageRequest(), metadata=tuple(bearer(user).items())
        )
    assert [(r.cost_nanos, r.cost_source) for r in usage.records] == [
        (50_000, "priced"),
        (0, "unpriced"),
        (37_500, "priced"),
    ]
    assert usage.totals.cost_nanos == 87_500

    # each door's access line says it in dollars, a number
    assert access_line(gateway, priced.headers["x-request-id"])["cost_usd"] == Decimal("0.0000375")
    assert access_line(gateway, unpriced.headers["x-request-id"])["cost_usd"] == 0
    assert access_line(gateway, f"grpc-{user}")["cost_usd"] == Decimal("0.00005")
    # counted once a request: what this test spent, in the priced model's series
    after = eventually(lambda: spent(gateway, "priced-echo"), what="the priced spend")
    assert after - before == pytest.approx(87_500e-9, abs=1e-12)
    assert spent(gateway, "echo") == 0


def openai_turn(usage: dict[str, Any]) -> Turn:
    """An OpenAI-compatible answer whose usage is `usage`, whole or streamed."""
    head = {"id": "up-9", "created": 1, "model": "m"}
    message = {"role": "assistant", "content": "priced words"}
    whole = {
        **head,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage,
    }
    chunk = {**head, "object": "chat.completion.chunk"}
    events: list[tuple[str, Any]] = [
        ("", {**chunk, "choices": [{"index": 0, "delta": message, "finish_reason": None}]}),
        ("", {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        ("", {**chunk, "choices": [], "usage": usage}),
    ]
    return Turn(whole, events)


def anthropic_turn(usage: dict[str, Any]) -> Turn:
    """An Anthropic answer of one text block whose usage is `usage` (whole only)."""
    whole = {
        "id": "msg_up9",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "priced words"}],
        "stop_reason": "end_turn",
        "usage": usage,
    }
    return Turn(whole, [])


def genai_nanos(record: dict[str, Any], model_ref: str, provider_id: str) -> int:
    """What genai-prices says the record's tokens cost at its arrival, in nanos (half up)."""
    usage = Usage(
        input_tokens=record["prompt_tokens"],
        cache_read_tokens=record["cached_tokens"],
        cache_write_tokens=record["cache_write_tokens"],
        output_tokens=record["completion_tokens"],
        output_reasoning_tokens=record["reasoning_tokens"],
    )
    price = calc_price(
        usage,
        model_ref,
        provider_id=provider_id,
        genai_request_timestamp=datetime.fromisoformat(record["created_at"]),
    )
    return int((price.total_price * 10**9).quantize(Decimal(1), ROUND_HALF_UP))


@pytest.mark.parametrize("stream", [False, True])
def test_a_genai_priced_model_costs_what_genai_prices_calculates_to_the_nano(
    gateway: TandemProcess, upstream: ScriptedUpstream, stream: bool
) -> None:
    user = new_user()
    upstream.reset(openai_turn(OPENAI_USAGE), openai_turn(OPENAI_USAGE))
    chat = f"{gateway.base_url}/v1/chat/completions"
    for model in ("mini", "thinker"):
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        answered = httpx.post(chat, json=body, headers=bearer(user))
        assert answered.status_code == 200, answered.text
    if not stream:  # Anthropic's usage: cache reads and writes apart from the input
        upstream.reset(anthropic_turn(ANTHROPIC_USAGE))
        body = {"model": "haiku", "messages": [{"role": "user", "content": "hi"}]}
        answered = httpx.post(chat, json=body, headers=bearer(user))
        assert answered.status_code == 200, answered.text

    records = usage_records(gateway, 2 if stream else 3, ADMIN_KEY, user=user)
    by_model = {r["model"]: r for r in records}
    for model in ("mini", "thinker"):
        record = by_model[model]
        tokens = (
            record["prompt_tokens"],
            record["cached_tokens"],
            record["completion_tokens"],
            record["reasoning_tokens"],
            record["usage_source"],
        )
        assert tokens == (12_345, 8_000, 2_345, 1_500, "upstream")
    expected = {
        "mini": genai_nanos(by_model["mini"], "gpt-4o-mini", "openai"),
        "thinker": genai_nanos(by_model["thinker"], "o4-mini", "openai"),
    }
    if not stream:
        haiku = by_model["haiku"]
        written = (haiku["prompt_tokens"], haiku["cached_tokens"], haiku["cache_write_tokens"])
        assert written == (12_003, 8_000, 3_000)
        expected["haiku"] = genai_nanos(haiku, "claude-haiku-4-5", "anthropic")
    assert all(nanos > 0 for nanos in expected.values()), expected
    assert {m: (r["cost_nanos"], r["cost_source"]) for m, r in by_model.items()} == {
        m: (nanos, "priced") for m, nanos in expected.items()
    }
    for record in records:  # each access line says what its record does, streamed or not
        line = access_line(gateway, record["request_id"])
        assert line["cost_usd"] == Decimal(record["cost_nanos"]) / 10**9
    totals = exact(httpx.get(f"{gateway.base_url}/native/v1/usage", headers=bearer(user)))
    assert totals["totals"]["cost_nanos"] == sum(expected.values())
    assert totals["totals"]["cost_usd"] == Decimal(sum(expected.values())) / 10**9


def test_a_fallbacks_call_costs_what_the_fallback_charges(
    gateway: TandemProcess, upstream: ScriptedUpstream
) -> None:
    """Asked for `first` (gpt-4o-mini's price), served by `second` (its own price): the
    record names the model asked for and the provider that served, at the server's price."""
    user = new_user()
    upstream.reset(openai_turn(OPENAI_USAGE))
    body = {"model": "first", "messages": [{"role": "user", "content": "hi"}]}
    answered = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json=body, headers=bearer(user)
    )
    assert answered.status_code == 200, answered.text
    [record] = usage_records(gateway, 1, ADMIN_KEY, user=user)
    assert (record["model"], record["provider"]) == ("first", "up")
    # 12,345 prompt tokens at $1 (no cache price: the input's) and 2,345 at $2, a million
    assert (record["cost_nanos"], record["cost_source"]) == (17_035_000, "priced")
    assert record["cost_nanos"] != genai_nanos(record, "gpt-4o-mini", "openai")


def test_a_price_per_call_is_charged_for_a_call_that_was_charged_tokens_only(
    gateway: TandemProcess, upstream: ScriptedUpstream
) -> None:
    """Perplexity's sonar costs $12 per thousand calls beside its tokens: an answered call
    pays it (as genai-prices says), a failure that produced nothing is free, as its
    tokens are."""
    user = new_user()
    upstream.reset(openai_turn(OPENAI_USAGE))  # then nothing scripted: a 500
    body = {"model": "searcher", "messages": [{"role": "user", "content": "hi"}]}
    chat = f"{gateway.base_url}/v1/chat/completions"
    assert httpx.post(chat, json=body, headers=bearer(user)).status_code == 200
    assert httpx.post(chat, json=body, headers=bearer(user)).status_code == 502
    failed, answered = usage_records(gateway, 2, ADMIN_KEY, user=user)
    assert answered["cost_nanos"] == genai_nanos(answered, "sonar", "perplexity") > 12_000_000
    assert (failed["status"], failed["prompt_tokens"], failed["completion_tokens"]) == (
        "error:upstream_error",
        0,
        0,
    )
    assert (failed["cost_nanos"], failed["cost_source"]) == (0, "priced")
