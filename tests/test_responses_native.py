"""`responses: native`: `/v1/responses` relayed to an upstream that speaks the Responses
API itself (a fake one on loopback: tests/fake_responses.py), driven by the official
`openai` SDK and raw HTTP. The request reaches it as written (the model renamed), its
items and events come back unchanged (sealed reasoning, hosted tool calls), and the call
is counted, limited and recorded as any other."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.eventually import eventually, eventually_async
from tests.fake_responses import (
    ANSWER,
    ENCRYPTED,
    INTERNAL_HOST,
    MESSAGE,
    REASONING,
    RESPONSE_ID,
    SECRET_URL,
    UPSTREAM_KEY,
    UPSTREAM_MODEL,
    USAGE,
    WEB_SEARCH,
    FakeResponsesUpstream,
)
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.responses_helpers import ADMIN_KEY, AUTH, WEATHER, post, raw, sdk_for, token
from tests.servers import TandemProcess, start_tandem, usage_records
from tests.sse import named_events

CONFIG = f"""
providers:
  - {{name: up, kind: openai, base_url: "%(url)s", api_key: "%(key)s", responses: native,
      max_retries: 1}}
  - {{name: up-chat, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0}}
  - {{name: demo, kind: mock}}
  - {{name: up-slow, kind: openai, base_url: "%(url)s", api_key: "%(key)s", responses: native,
      max_retries: 0, timeout_s: 0.5}}
models:
  - {{name: gpt-native, provider: up, upstream: "{UPSTREAM_MODEL}"}}
  - {{name: native-then-chat, provider: up, upstream: "{UPSTREAM_MODEL}",
      fallbacks: [chat-model]}}
  - {{name: chat-model, provider: up-chat, upstream: chat-upstream}}
  - {{name: echo, provider: demo}}
  - {{name: gpt-slow, provider: up-slow, upstream: "{UPSTREAM_MODEL}"}}
  - {{name: slow-then-native, provider: up-slow, upstream: "{UPSTREAM_MODEL}",
      fallbacks: [gpt-native]}}
tiers:
  free: {{default_model: echo}}
  tight: {{default_model: gpt-native, requests_per_minute: 2, tokens_per_minute: 100000}}
  small: {{default_model: gpt-native, tokens_per_minute: 50}}
  echo-only: {{default_model: echo, models: [echo]}}
  single: {{default_model: gpt-native, max_concurrent_requests: 1}}
{AUTH}
usage: {{store: "sqlite:///usage.db", flush_interval_ms: 20}}
server: {{max_body_bytes: 65536}}  # a relayed answer: 128 KiB whole, 512 KiB streamed
telemetry: {{otlp_endpoint: "%(otlp)s"}}
"""
TOOLS: Any = [{"type": "web_search"}, WEATHER]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeResponsesUpstream]:
    with FakeResponsesUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as collector:
        yield collector


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeResponsesUpstream,
    receiver: OtlpReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TandemProcess]:
    config = CONFIG % {"url": upstream.base_url, "key": UPSTREAM_KEY, "otlp": receiver.endpoint}
    fast_export = {"OTEL_BSP_SCHEDULE_DELAY": "100"}
    process = start_tandem(tmp_path_factory.mktemp("native"), config, env=fast_export)
    yield process
    assert process.terminate() == 0, process.stderr()


@pytest.fixture
def sdk(gateway: TandemProcess, upstream: FakeResponsesUpstream) -> Iterator[Any]:
    upstream.reset()
    with sdk_for(gateway) as client:
        yield client


def test_the_upstream_gets_the_request_as_written_but_for_the_model(
    sdk: Any, upstream: FakeResponsesUpstream
) -> None:
    response = sdk.responses.create(
        model="gpt-native",
        instructions="be brief",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "search it"}]},
            {"type": "reasoning", "id": "rs_old", "summary": [], "encrypted_content": "sealed"},
        ],
        tools=TOOLS,
        include=["reasoning.encrypted_content", "web_search_call.action.sources"],
        store=False,
        reasoning={"effort": "high", "summary": "auto"},
        max_output_tokens=1000,
        extra_body={"service_tier": "flex", "prompt_cache_key": "k1"},
    )
    [received] = upstream.requests
    assert received.path == "/v1/responses"
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert response.output_text == ANSWER
    expected = {
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "search it"}]},
            {"type": "reasoning", "id": "rs_old", "summary": [], "encrypted_content": "sealed"},
        ],
        "model": UPSTREAM_MODEL,
        "include": ["reasoning.encrypted_content", "web_search_call.action.sources"],
        "instructions": "be brief",
        "max_output_tokens": 1000,
        "reasoning": {"effort": "high", "summary": "auto"},
        "store": False,
        "tools": TOOLS,
        "service_tier": "flex",
        "prompt_cache_key": "k1",
    }
    assert received.body == expected  # hosted tools, `include`, `store` and extras untouched


def test_a_relayed_request_keeps_the_callers_bytes_order_and_numbers(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset()
    written = (
        b'{"top_p": 1.0, "input": "hi", "metadata": {"z": "1", "a": "2"}, '
        b'"model": "gpt-native", "max_output_tokens": 77, "text": {"format": {"type": '
        b'"json_schema", "name": "s", "schema": {"properties": {"b": {}, "a": {}}}}}}'
    )
    answer = raw(
        gateway,
        "POST",
        "/v1/responses",
        content=written,
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    [received] = upstream.requests
    expected = orjson.loads(written)
    expected["model"] = UPSTREAM_MODEL
    assert received.raw == orjson.dumps(expected)  # key order, 1.0 and 77 as written


def test_a_whole_answer_comes_back_as_the_upstream_wrote_it(sdk: Any) -> None:
    response = sdk.responses.create(model="gpt-native", input="hello", tools=TOOLS)
    assert response.id == RESPONSE_ID
    assert response.model == "gpt-native"  # the public name, as on every door
    assert [item.to_dict() for item in response.output] == [REASONING, WEB_SEARCH, MESSAGE]
    assert response.output[0].encrypted_content == ENCRYPTED
    assert response.output_text == ANSWER
    assert response.usage.to_dict() == USAGE


def test_a_stream_relays_the_upstreams_events_unchanged(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset()
    answer = post(gateway, {"model": "gpt-native", "input": "hello", "stream": True})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    seen = named_events(answer)
    assert [name for name, _ in seen] == [data["type"] for _, data in seen]
    assert [data["sequence_number"] for _, data in seen] == list(range(len(seen)))
    names = [name for name, _ in seen]
    assert names[0] == "response.created"
    assert names[-1] == "response.completed"
    assert "response.web_search_call.searching" in names
    done = [data["item"] for name, data in seen if name == "response.output_item.done"]
    assert done == [REASONING, WEB_SEARCH, MESSAGE]
    final = seen[-1][1]["response"]
    assert (final["id"], final["model"], final["usage"]) == (RESPONSE_ID, "gpt-native", USAGE)
    deltas = [d["delta"] for n, d in seen if n == "response.output_text.delta"]
    assert "".join(deltas) == ANSWER


def test_the_sdk_stream_and_its_final_response(sdk: Any) -> None:
    with sdk.responses.stream(
        model="gpt-native", input="hello", tools=TOOLS, include=["reasoning.encrypted_content"]
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == ANSWER
    assert final.output_text == ANSWER
    assert [item.type for item in final.output] == ["reasoning", "web_search_call", "message"]
    assert final.output[0].encrypted_content == ENCRYPTED
    assert final.output[1].to_dict() == WEB_SEARCH
    assert final.usage.output_tokens_details.reasoning_tokens == 17


def test_the_ledger_records_the_upstreams_usage_once_as_protocol_responses(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset()
    assert post(gateway, {"model": "gpt-native", "input": "x"}, sub="ledger").status_code == 200
    streamed = post(gateway, {"model": "gpt-native", "input": "y", "stream": True}, sub="ledger")
    assert streamed.status_code == 200
    records = usage_records(gateway, 2, ADMIN_KEY, user="ledger")
    for record in records:
        assert (record["protocol"], record["status"], record["provider"]) == (
            "responses",
            "ok",
            "up",
        )
        assert (record["model"], record["usage_source"]) == ("gpt-native", "upstream")
        assert (record["prompt_tokens"], record["completion_tokens"]) == (41, 29)
        assert (record["cached_tokens"], record["reasoning_tokens"]) == (13, 17)
    assert sorted(r["ttft_ms"] is None for r in records) == [False, True]


def receiver_traceparent(headers: dict[str, str], span: ReceivedSpan) -> bool:
    """The upstream request carried the call's span on as its parent."""
    return headers.get("traceparent", "").split("-")[1:3] == [span.trace_id, span.span_id]


def test_a_relayed_call_has_its_access_line_span_metrics_and_upstream_request_id(
    gateway: TandemProcess, upstream: FakeResponsesUpstream, receiver: OtlpReceiver
) -> None:
    upstream.reset("500")  # one failed attempt, retried
    answer = raw(
        gateway,
        "POST",
        "/v1/responses",
        "seen",
        headers={"x-request-id": "native-line-1"},
        json={"model": "gpt-native", "input": "x", "stream": True},
    )
    assert answer.status_code == 200
    assert [r.headers["x-request-id"] for r in upstream.requests] == ["native-line-1"] * 2

    def line() -> Any:
        lines = [orjson.loads(text) for text in gateway.stderr().splitlines() if "{" in text]
        return next((x for x in lines if x.get("request_id") == "native-line-1"), None)

    logged = eventually(line, what="the access line")
    assert (logged["protocol"], logged["model"], logged["provider"]) == (
        "responses",
        "gpt-native",
        "up",
    )
    assert (logged["status"], logged["prompt_tokens"], logged["completion_tokens"]) == (
        200,
        41,
        29,
    )
    assert logged["ttft_ms"] is not None
    span = receiver.for_request("native-line-1")
    assert span.name == "chat gpt-native"
    assert span.attributes["tandem.protocol"] == "responses"
    assert span.attributes["gen_ai.response.model"] == UPSTREAM_MODEL
    assert span.attributes["gen_ai.usage.input_tokens"] == 41
    assert span.attributes["gen_ai.usage.output_tokens"] == 29
    assert receiver_traceparent(upstream.requests[-1].headers, span)
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    assert "tandem_upstream_errors_total{" in metrics
    assert any(
        line.startswith("tandem_requests_total{") and 'protocol="responses"' in line
        for line in metrics.splitlines()
    )


def test_without_usage_the_estimate_is_charged(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("nousage")
    answer = post(
        gateway, {"model": "gpt-native", "input": "one two three", "stream": True}, sub="est"
    )
    assert answer.status_code == 200
    [record] = usage_records(gateway, 1, ADMIN_KEY, user="est")
    assert record["usage_source"] == "estimated"
    assert record["prompt_tokens"] == 4  # ⌈13 bytes / 4⌉
    assert record["completion_tokens"] == 8  # ⌈31 bytes of deltas / 4⌉


def test_a_500_before_the_first_byte_is_retried(sdk: Any, upstream: FakeResponsesUpstream) -> None:
    upstream.reset("500")
    response = sdk.responses.create(model="gpt-native", input="hello")
    assert response.output_text == ANSWER
    assert len(upstream.requests) == 2


def test_repeated_5xx_is_a_502_that_says_not_to_retry(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("500", "500")
    answer = post(gateway, {"model": "gpt-native", "input": "x", "stream": True})
    assert answer.status_code == 502
    assert answer.headers["x-should-retry"] == "false"
    assert answer.json()["error"]["type"] == "upstream_error"
    assert len(upstream.requests) == 2


def test_an_upstream_400_keeps_its_message_but_not_its_url_or_key(
    sdk: Any, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("400")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="gpt-native", input="hello", temperature=9)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "temperature"
    assert "Unsupported value for temperature" in error["message"]
    text = caught.value.response.text
    for secret in (SECRET_URL, "10.9.8.7", UPSTREAM_KEY, upstream.base_url, INTERNAL_HOST):
        assert secret not in text
    assert len(upstream.requests) == 1  # the caller's error: not retried


def test_an_unknown_previous_response_id_upstream_is_a_404(
    sdk: Any, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("404")
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.responses.create(model="gpt-native", input="more", previous_response_id="resp_gone")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert upstream.requests[0].body["previous_response_id"] == "resp_gone"


def test_a_cut_mid_stream_ends_in_response_failed_naming_the_response(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("cut")
    answer = post(gateway, {"model": "gpt-native", "input": "x", "stream": True}, sub="cut")
    assert answer.status_code == 200
    seen = named_events(answer)
    assert [name for name, _ in seen] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.output_item.done",
        "response.failed",
    ]
    failed = seen[-1][1]
    assert failed["sequence_number"] == 4
    assert failed["response"]["id"] == RESPONSE_ID
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["output"] == [REASONING]
    assert failed["response"]["error"]["message"]
    assert SECRET_URL not in answer.text
    [record] = usage_records(gateway, 1, ADMIN_KEY, user="cut")
    assert record["status"] == "error:upstream_error"
    upstream.reset("cut")
    with (
        sdk_for(gateway) as client,
        client.responses.stream(model="gpt-native", input="x") as stream,
    ):
        kinds = [event.type for event in stream]
    assert kinds[-1] == "response.failed"
    assert kinds.count("response.failed") == 1


def test_an_answer_past_the_bound_is_cut(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("flood:1")
    whole = post(gateway, {"model": "gpt-native", "input": "x"})
    assert whole.status_code == 502
    assert "larger than 131072 bytes" in whole.json()["error"]["message"]
    upstream.reset("flood:1")
    streamed = post(gateway, {"model": "gpt-native", "input": "x", "stream": True})
    seen = named_events(streamed)
    assert seen[-1][0] == "response.failed"
    assert "larger than 524288 bytes" in seen[-1][1]["response"]["error"]["message"]
    relayed = sum(len(d["delta"]) for n, d in seen if n == "response.output_text.delta")
    assert 0 < relayed <= 524288


def test_the_upstreams_own_response_failed_is_relayed_once(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("failed")
    answer = post(gateway, {"model": "gpt-native", "input": "x", "stream": True}, sub="upfail")
    seen = named_events(answer)
    assert [name for name, _ in seen][-2:] == ["response.output_item.done", "response.failed"]
    assert seen[-1][1]["response"]["error"]["message"] == "the model failed"
    [record] = usage_records(gateway, 1, ADMIN_KEY, user="upfail")
    assert record["status"] == "error:upstream_error"


def test_an_event_type_that_would_break_the_framing_ends_the_stream(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("inject")
    answer = post(gateway, {"model": "gpt-native", "input": "x", "stream": True})
    seen = named_events(answer)  # each event one `event:` line and one `data:` line
    assert [name for name, _ in seen][-2:] == ["response.output_item.done", "response.failed"]
    assert "response.injected" not in answer.text


def test_the_upstreams_own_response_failed_names_no_host_or_key(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("failed:leak")
    answer = post(gateway, {"model": "gpt-native", "input": "x", "stream": True})
    seen = named_events(answer)
    assert seen[-1][0] == "response.failed"
    assert seen[-1][1]["response"]["error"]["message"].startswith("the model failed at ")
    for secret in (INTERNAL_HOST, UPSTREAM_KEY):
        assert secret not in answer.text


async def test_a_caller_that_goes_away_mid_stream_is_charged_and_the_upstream_cut(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("drip")
    started = time.monotonic()
    body = {"model": "gpt-native", "input": "x", "stream": True}
    headers = {"authorization": f"Bearer {token('gone')}"}
    async with (
        httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http,
        http.stream("POST", "/v1/responses", json=body, headers=headers) as answer,
    ):
        async for line in answer.aiter_lines():
            if "response.output_text.delta" in line:
                break
    await eventually_async(upstream.hung_up, 5, what="the gateway hung up on the upstream")
    [record] = usage_records(gateway, 1, ADMIN_KEY, user="gone")
    assert (record["status"], record["protocol"]) == ("cancelled", "responses")
    assert record["prompt_tokens"] > 0
    assert time.monotonic() - started < 8


def test_a_caller_that_gives_up_on_a_whole_answer_is_charged_its_prompt(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("slow:3")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.base_url}/v1/responses",
            json={"model": "gpt-native", "input": "four words of prompt"},
            headers={"authorization": f"Bearer {token('impatient')}"},
            timeout=0.5,
        )
    [record] = usage_records(gateway, 1, ADMIN_KEY, user="impatient")
    assert record["status"] == "cancelled"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (5, 0)


def test_rate_limits_apply_to_relayed_calls(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset()
    with sdk_for(gateway, sub="rpm", tier="tight") as client:
        client.responses.create(model="gpt-native", input="one")
        client.responses.create(model="gpt-native", input="two", stream=True).close()
        with pytest.raises(openai.RateLimitError) as caught:
            client.responses.create(model="gpt-native", input="three")
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(upstream.requests) == 2
    with sdk_for(gateway, sub="tpm", tier="small") as client:
        with pytest.raises(openai.RateLimitError) as caught:  # 41 + 29 tokens charged: 50 a minute
            client.responses.create(model="gpt-native", input="hi")
            client.responses.create(model="gpt-native", input="hi")
        with pytest.raises(openai.RateLimitError):  # could never fit: refused at once
            client.responses.create(model="gpt-native", input="hi", max_output_tokens=500)
    assert len(upstream.requests) == 3


async def test_a_tiers_concurrency_bound_holds_for_relayed_streams(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("drip")
    body = {"model": "gpt-native", "input": "x", "stream": True}
    headers = {"authorization": f"Bearer {token('single', 'single')}"}
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        async with http.stream("POST", "/v1/responses", json=body, headers=headers) as first:
            assert first.status_code == 200
            second = await http.post("/v1/responses", json=body, headers=headers)
            assert second.status_code == 429
            assert second.json()["error"]["code"] == "concurrency_limit_exceeded"

        async def answered() -> bool:  # the slot comes back once the gateway saw it go
            again = await http.post(
                "/v1/responses", json={**body, "stream": False}, headers=headers
            )
            return again.status_code == 200

        await eventually_async(answered, 5, what="the slot given back")
    assert len(upstream.requests) == 2


def test_a_model_outside_the_tier_is_refused_before_the_upstream(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset()
    client = sdk_for(gateway, sub="narrow", tier="echo-only")
    with client, pytest.raises(openai.PermissionDeniedError):
        client.responses.create(model="gpt-native", input="x")
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("background", True), ("conversation", "conv_1"), ("prompt", {"id": "pmpt_1"})],
)
def test_what_the_gateway_does_not_relay_is_refused(
    gateway: TandemProcess, upstream: FakeResponsesUpstream, field: str, value: Any
) -> None:
    upstream.reset()
    answer = post(gateway, {"model": "gpt-native", "input": "x", field: value})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == field
    assert upstream.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_that_times_out_is_a_504_charged_its_prompt_once(
    gateway: TandemProcess, upstream: FakeResponsesUpstream, stream: bool
) -> None:
    upstream.reset("slow:2")
    sub = f"timeout-{stream}"
    answer = post(gateway, {"model": "gpt-slow", "input": "a b c", "stream": stream}, sub=sub)
    assert answer.status_code == 504
    assert answer.headers["x-should-retry"] == "false"
    assert answer.json()["error"]["type"] == "timeout_error"
    [record] = usage_records(gateway, 1, ADMIN_KEY, user=sub)
    assert record["status"] == "error:timeout_error"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (3, 0)


def test_a_native_models_native_fallback_serves(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("slow:2", "ok")
    answer = post(gateway, {"model": "slow-then-native", "input": "x"}, sub="fellback")
    assert answer.status_code == 200
    assert answer.json()["model"] == "slow-then-native"
    [record] = usage_records(gateway, 1, ADMIN_KEY, user="fellback")
    assert (record["provider"], record["status"], record["prompt_tokens"]) == ("up", "ok", 41)


def test_a_native_models_translated_fallback_is_not_tried(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    upstream.reset("500", "500", "500")
    answer = post(gateway, {"model": "native-then-chat", "input": "x"})
    assert answer.status_code == 502
    assert [r.path for r in upstream.requests] == ["/v1/responses", "/v1/responses"]


def test_a_translated_model_still_translates(sdk: Any, upstream: FakeResponsesUpstream) -> None:
    response = sdk.responses.create(model="echo", input="plain echo")
    assert response.output_text == "plain echo"
    assert upstream.requests == []
