"""Rate limits on a real server: their headers, and 429 / RESOURCE_EXHAUSTED on every door
(the buckets themselves: tests/unit/policy/test_limiter.py)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc, models_pb2, models_pb2_grpc

from tests.eventually import eventually
from tests.rpc_status import details_of
from tests.servers import TandemProcess, start_tandem

CONFIG = """
providers: [{name: demo, kind: mock}]
models: [{name: echo, provider: demo}]
tiers:
  free: {default_model: echo, requests_per_minute: 3, tokens_per_minute: 100}
"""


@pytest.fixture
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TandemProcess]:
    process = start_tandem(tmp_path_factory.mktemp("rl"), CONFIG)
    yield process
    assert process.terminate() == 0


def body(text: str = "two words", **fields: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}], **fields}


def test_429_with_retry_after_and_headers_on_http(limited: TandemProcess) -> None:
    with httpx.Client(base_url=limited.base_url) as http:
        answers = [http.post("/v1/chat/completions", json=body()) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    first = answers[0].headers
    assert first["x-ratelimit-limit-requests"] == "3"
    assert first["x-ratelimit-remaining-requests"] == "2"
    assert first["x-ratelimit-reset-requests"] == "20s"
    assert first["x-ratelimit-limit-tokens"] == "100"
    assert int(first["x-ratelimit-remaining-tokens"]) == 97  # max(2 words, ⌈9 bytes / 4⌉) reserved
    refused = answers[3]
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    assert 0 < int(refused.headers["retry-after-ms"]) <= 20_000
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in refused.headers


def test_one_budget_across_grpc_native_and_openai(limited: TandemProcess) -> None:
    async def grpc_call() -> chat_pb2.ChatCompletion:
        async with grpc.aio.insecure_channel(limited.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            request = chat_pb2.ChatCompletionRequest(
                messages=[chat_pb2.ChatMessage(role="user", content="hi")]
            )
            call = stub.CreateChatCompletion(request)
            completion = await call
            trailers = dict(await call.trailing_metadata())
            assert trailers["x-ratelimit-remaining-requests"] == "2"
            return completion

    asyncio.run(grpc_call())
    assert (
        httpx.post(f"{limited.base_url}/native/v1/chat/completions", json=body()).status_code == 200
    )
    assert httpx.post(f"{limited.base_url}/v1/chat/completions", json=body()).status_code == 200

    async def refused() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(limited.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            request = chat_pb2.ChatCompletionRequest(
                messages=[chat_pb2.ChatMessage(role="user", content="hi")]
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateChatCompletion(request)
            return caught.value

    error = asyncio.run(refused())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = details_of(error)
    assert details.error_info is not None
    assert details.error_info.reason == "rate_limit_error"
    assert details.retry_info is not None
    assert (
        0
        < details.retry_info.retry_delay.seconds + details.retry_info.retry_delay.nanos / 1e9
        <= 20
    )
    trailers = dict(error.trailing_metadata() or ())
    assert trailers["x-ratelimit-remaining-requests"] == "0"


def test_headers_ride_on_streams_too(limited: TandemProcess) -> None:
    response = httpx.post(f"{limited.base_url}/v1/chat/completions", json=body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-ratelimit-remaining-requests"] == "2"


def test_tokens_are_reserved_then_settled_to_the_real_usage(limited: TandemProcess) -> None:
    with httpx.Client(base_url=limited.base_url) as http:
        first = http.post("/v1/chat/completions", json=body("a b c", max_tokens=40))
        # reserved 3 prompt words + 40 max_tokens = 43; used 3 + 3 = 6
        assert int(first.headers["x-ratelimit-remaining-tokens"]) == 100 - 43
        second = http.post("/v1/chat/completions", json=body("a"))
        assert int(second.headers["x-ratelimit-remaining-tokens"]) in (100 - 6 - 1, 100 - 6 - 1 + 1)
        never = http.post("/v1/chat/completions", json=body("x", max_tokens=500))
    assert never.status_code == 429
    assert never.headers["x-should-retry"] == "false"
    assert "needs 501 tokens" in never.json()["error"]["message"]


def test_a_tier_without_limits_sends_no_headers(shared_server: TandemProcess) -> None:
    response = httpx.post(
        f"{shared_server.base_url}/v1/chat/completions", json={"model": "echo", **body()}
    )
    assert not any(h.startswith("x-ratelimit") for h in response.headers)


def test_refused_calls_take_nothing_and_listings_count_one_request(
    limited: TandemProcess,
) -> None:
    with httpx.Client(base_url=limited.base_url) as http:
        missing = http.post("/v1/chat/completions", json=body(model="ghost"))
        assert missing.status_code == 404
        assert missing.headers["x-ratelimit-remaining-requests"] == "3"  # refused: not counted
        listing = http.get("/v1/models")
        assert listing.headers["x-ratelimit-limit-requests"] == "3"
        assert listing.headers["x-ratelimit-remaining-requests"] == "2"
        native = http.get("/native/v1/models")
        assert native.headers["x-ratelimit-remaining-requests"] == "1"
        assert native.headers["x-ratelimit-remaining-tokens"] == "100"  # no tokens taken

    async def grpc_trailers() -> tuple[dict[str, Any], dict[str, Any]]:
        async with grpc.aio.insecure_channel(limited.grpc) as channel:
            chat_stub = chat_pb2_grpc.ChatServiceStub(channel)
            request = chat_pb2.ChatCompletionRequest(
                model="ghost", messages=[chat_pb2.ChatMessage(role="user", content="x")]
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await chat_stub.CreateChatCompletion(request)
            models = models_pb2_grpc.ModelServiceStub(channel).ListModels(
                models_pb2.ListModelsRequest()
            )
            await models
            return dict(caught.value.trailing_metadata() or ()), dict(
                await models.trailing_metadata()
            )

    not_found, listed = asyncio.run(grpc_trailers())
    assert not_found["x-ratelimit-remaining-requests"] == "1"
    assert listed["x-ratelimit-remaining-requests"] == "0"
    assert listed["x-ratelimit-limit-tokens"] == "100"
    with httpx.Client(base_url=limited.base_url) as http:
        assert http.get("/v1/models/echo").status_code == 429  # listings are not free


def test_usage_reads_count_one_request_each(limited: TandemProcess) -> None:
    with httpx.Client(base_url=limited.base_url) as http:
        reads = [http.get("/native/v1/usage", params={"limit": 1000}) for _ in range(4)]
    assert [r.status_code for r in reads] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in reads] == ["2", "1", "0", "0"]


SLOW = """
providers: [{name: demo, kind: mock, chunk_delay_ms: 20}]
models: [{name: echo, provider: demo}]
tiers:
  free: {default_model: echo, tokens_per_minute: 1000}
"""


def test_a_cancelled_stream_is_charged_for_what_it_got(
    tandem: Callable[..., TandemProcess],
) -> None:
    server = tandem(SLOW)
    prompt = " ".join(["w"] * 50)
    with httpx.Client(base_url=server.base_url) as http:
        started = time.monotonic()
        with http.stream(
            "POST", "/v1/chat/completions", json=body(prompt, stream=True)
        ) as response:
            request_id = response.headers["x-request-id"]
            lines = response.iter_lines()
            received = sum(
                1 for _, line in zip(range(20), lines, strict=False) if line.startswith("data: ")
            )
        assert received >= 5
        # the server notices the disconnect, settles, then logs the call
        eventually(lambda: f'"request_id":"{request_id}"' in server.stderr())
        after = http.post("/v1/chat/completions", json=body("x"))
        elapsed_s = time.monotonic() - started

        def recorded() -> dict[str, Any] | None:
            records = http.get("/native/v1/usage", params={"limit": 10}).json()["records"]
            return next((r for r in records if r["request_id"] == request_id), None)

        record = eventually(recorded)
    assert record["status"] == "cancelled"
    assert record["prompt_tokens"] >= 50
    assert record["completion_tokens"] >= received - 1  # what it got, give or take a role chunk
    # the bucket holds 1000 less what the stream was charged and the next call's reservation
    # of one token, plus what it refilled since the stream began (1000 a minute): the
    # charge is the record's, to the token
    left = 1000 - record["prompt_tokens"] - record["completion_tokens"] - 1
    remaining = int(after.headers["x-ratelimit-remaining-tokens"])
    assert left <= remaining <= left + math.ceil(elapsed_s * 1000 / 60)
