"""Rate limits: GCRA buckets, their headers, and 429 / RESOURCE_EXHAUSTED on every door."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc, models_pb2, models_pb2_grpc

from server.policy.headers import format_duration
from server.policy.limiter import MemoryLimiter
from tests.eventually import eventually
from tests.rpc_status import details_of
from tests.servers import TandemProcess, start_tandem


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_requests_bucket_allows_capacity_then_refills_continuously(clock: Clock) -> None:
    limiter = MemoryLimiter(clock=clock)
    decisions = [await limiter.acquire("k", 3, None, 0) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.requests.remaining for d in decisions if d.requests] == [2, 1, 0, 0]
    assert decisions[3].retry_after_s == pytest.approx(20.0)  # one request every 20 s
    assert decisions[2].requests is not None
    assert decisions[2].requests.reset_s == pytest.approx(60.0)
    clock.now += 19.9
    assert not (await limiter.acquire("k", 3, None, 0)).allowed
    clock.now += 0.1
    assert (await limiter.acquire("k", 3, None, 0)).allowed
    assert (
        await limiter.acquire("other", 3, None, 0)
    ).allowed  # separate callers, separate buckets


@pytest.mark.parametrize("now", [500.49469980918883, 1000.0])  # (now + 60) - 60 > now, and not
async def test_the_whole_capacity_is_granted_whatever_the_clock_reads(
    clock: Clock, now: float
) -> None:
    clock.now = now
    limiter = MemoryLimiter(clock=clock)
    assert (await limiter.acquire("one", 1, None, 0)).allowed  # a budget of one request
    assert [(await limiter.acquire("seven", 7, None, 0)).allowed for _ in range(8)] == [
        *[True] * 7,
        False,
    ]


async def test_requests_and_tokens_are_taken_together_or_not_at_all(clock: Clock) -> None:
    limiter = MemoryLimiter(clock=clock)
    assert (await limiter.acquire("k", 10, 100, 80)).allowed
    refused = await limiter.acquire("k", 10, 100, 30)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(6.0)  # 10 tokens short at 100/min
    assert refused.requests is not None
    assert refused.requests.remaining == 9  # the refused call took no request


async def test_a_cost_over_the_whole_capacity_never_fits(clock: Clock) -> None:
    decision = await MemoryLimiter(clock=clock).acquire("k", None, 100, 101)
    assert (decision.allowed, decision.fits_ever) == (False, False)


async def test_settlement_moves_the_budget_and_may_leave_it_below_zero(clock: Clock) -> None:
    limiter = MemoryLimiter(clock=clock)
    assert (await limiter.acquire("k", None, 100, 50)).allowed
    limiter.settle("k", 100, -50)  # used nothing: all given back
    assert (await limiter.acquire("k", None, 100, 100)).allowed
    limiter.settle("k", 100, 60)  # used 60 more than reserved: overdrawn
    decision = await limiter.acquire("k", None, 100, 0)
    assert not decision.allowed
    assert decision.retry_after_s == pytest.approx(36.0)


async def test_workers_share_a_capacity(clock: Clock) -> None:
    limiter = MemoryLimiter(share=1 / 4, clock=clock)
    assert [(await limiter.acquire("k", 8, None, 0)).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]


@pytest.mark.parametrize(
    ("seconds", "spelled"),
    [
        (0, "0s"),
        (0.02, "20ms"),
        (0.0201, "21ms"),
        (1.5, "1.5s"),
        (6, "6s"),
        (60, "1m0s"),
        (90.25, "1m30.25s"),
    ],
)
def test_durations_are_spelled_as_openai_sends_them(seconds: float, spelled: str) -> None:
    assert format_duration(seconds) == spelled


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


async def test_going_over_a_reservation_is_charged_from_now(clock: Clock) -> None:
    limiter = MemoryLimiter(clock=clock)
    assert (await limiter.acquire("k", None, 20_000, 10)).allowed
    clock.now += 1.2  # the bucket has refilled meanwhile
    limiter.settle("k", 20_000, 300)
    decision = await limiter.peek("k", None, 20_000)
    assert decision.tokens is not None
    assert decision.tokens.remaining == 20_000 - 300


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
    # 50 prompt words and the chunks sent stay charged (refill over ~1 s is ~17 tokens)
    assert int(after.headers["x-ratelimit-remaining-tokens"]) < 1000 - 50 - 5 + 20
