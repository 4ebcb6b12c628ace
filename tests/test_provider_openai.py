"""The `openai` provider kind against a fake upstream, through every door."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.eventually import eventually_async
from tests.fake_upstream import SECRET_URL, UPSTREAM_KEY, FakeUpstream
from tests.rpc_status import error_info_of
from tests.servers import TandemProcess, start_tandem

CONFIG = """
providers:
  - {name: up, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 2, timeout_s: 1}
  - {name: strict, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0, timeout_s: 0.5}
  - {name: down, kind: openai, base_url: "http://127.0.0.1:9/v1", api_key: "%(key)s", max_retries: 1, connect_timeout_s: 1}
  - {name: local, kind: mock}
models:
  - {name: gpt, provider: up, upstream: gpt-upstream}
  - {name: gpt-once, provider: strict, upstream: gpt-upstream}
  - {name: gpt-with-backup, provider: up, upstream: gpt-upstream, fallbacks: [unreachable, echo-backup]}
  - {name: unreachable, provider: down}
  - {name: echo-backup, provider: local}
tiers:
  free: {default_model: gpt}
"""


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def test_every_field_passes_through_with_the_upstream_model_name(
    client: Any, fake: FakeUpstream
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "d",
                "parameters": {"type": "object", "properties": {}},
                "strict": True,
            },
        }
    ]
    fields = {
        "temperature": 0.7,
        "top_p": 0.5,
        "max_tokens": 99,
        "stop": ["END"],
        "n": 1,
        "seed": 42,
        "presence_penalty": 0.25,
        "frequency_penalty": -0.5,
        "logit_bias": {"50256": -100},
        "logprobs": True,
        "top_logprobs": 2,
        "parallel_tool_calls": False,
        "response_format": {"type": "json_object"},
        "user": "end-user-1",
        "tool_choice": {"type": "function", "function": {"name": "f"}},
    }  # each passes through as written
    completion = client.chat.completions.create(
        model="gpt",
        messages=[
            {"role": "system", "content": "sys"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,AA", "detail": "low"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "result"},
            {"role": "user", "content": "pass it all"},
        ],
        tools=tools,
        **fields,
    )
    assert completion.model == "gpt"  # the public name, not the upstream's
    assert completion.choices[0].message.content == "pass it all"
    sent = fake.requests[0]
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    body = sent.body
    assert body["model"] == "gpt-upstream"
    for key, value in fields.items():
        assert body[key] == value, key
    assert body["tools"] == tools  # as the caller wrote them
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}},
    ]
    assert body["messages"][2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    assert body["messages"][3] == {"role": "tool", "content": "result", "tool_call_id": "c1"}
    assert "stream" not in body


def test_streams_always_ask_upstream_for_usage_but_hide_it_unless_asked(
    client: Any, fake: FakeUpstream
) -> None:
    chunks = list(client.chat.completions.create(model="gpt", messages=user("a b c"), stream=True))
    assert fake.requests[0].body["stream_options"] == {"include_usage": True}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a b c"
    assert all(c.usage is None and c.choices for c in chunks)
    assert all(c.model == "gpt" for c in chunks)

    chunks = list(
        client.chat.completions.create(
            model="gpt", messages=user("a b c"), stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 3)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_round_trip(client: Any, fake: FakeUpstream, stream: bool) -> None:
    fake.reset("tools")
    if stream:
        chunks = list(
            client.chat.completions.create(model="gpt", messages=user("weather?"), stream=True)
        )
        pieces = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert {p.index for p in pieces} == {0, 1}
        assert [p.id for p in pieces if p.id] == ["call_a", "call_b"]
        arguments = {
            i: "".join(p.function.arguments or "" for p in pieces if p.index == i) for i in (0, 1)
        }
        assert arguments == {0: '{"city": "Paris"}', 1: "{}"}
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
    else:
        completion = client.chat.completions.create(model="gpt", messages=user("weather?"))
        message = completion.choices[0].message
        assert message.content is None
        assert [
            (c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []
        ] == [
            ("call_a", "get_weather", '{"city": "Paris"}'),
            ("call_b", "get_time", "{}"),
        ]
        assert completion.choices[0].finish_reason == "tool_calls"


def test_streamed_tool_calls_fold_into_a_grpc_unary_answer(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    async def call() -> chat_pb2.ChatCompletion:
        async with grpc.aio.insecure_channel(gateway.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            return await stub.CreateChatCompletion(
                chat_pb2.ChatCompletionRequest(
                    model="gpt", messages=[chat_pb2.ChatMessage(role="user", content="x")]
                )
            )

    fake.reset("tools")
    completion = asyncio.run(call())
    calls = completion.choices[0].message.tool_calls
    assert [(c.id, c.function.name) for c in calls] == [
        ("call_a", "get_weather"),
        ("call_b", "get_time"),
    ]


def test_retryable_failures_are_retried_and_counted_upstream(
    client: Any, fake: FakeUpstream
) -> None:
    fake.reset("500", "503")
    completion = client.chat.completions.create(model="gpt", messages=user("third time lucky"))
    assert completion.choices[0].message.content == "third time lucky"
    assert len(fake.requests) == 3


def test_retry_after_is_honoured(client: Any, fake: FakeUpstream) -> None:
    fake.reset("429:0.4")
    client.chat.completions.create(model="gpt", messages=user("patience"))
    assert len(fake.requests) == 2
    assert fake.requests[1].at - fake.requests[0].at >= 0.4


def test_all_attempts_failing_is_502_with_should_retry_false(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("500", "500", "500", "500")
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json={"model": "gpt", "messages": user("x")}
    )
    assert response.status_code == 502
    assert response.headers["x-should-retry"] == "false"
    error = response.json()["error"]
    assert error["type"] == "upstream_error"
    assert "3 attempts" in error["message"]
    assert len(fake.requests) == 3


def test_an_upstream_400_is_the_callers_400_without_retry(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("400")
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json={"model": "gpt", "messages": user("x")}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "temperature"
    assert len(fake.requests) == 1


def test_timeout_is_504_and_deadline_exceeded(gateway: TandemProcess, fake: FakeUpstream) -> None:
    fake.reset("slow:3")
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": "gpt-once", "messages": user("x")},
        timeout=10,
    )
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"
    assert response.headers["x-should-retry"] == "false"

    async def grpc_call() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(gateway.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateChatCompletion(
                    chat_pb2.ChatCompletionRequest(
                        model="gpt-once", messages=[chat_pb2.ChatMessage(role="user", content="x")]
                    )
                )
            return caught.value

    fake.reset("slow:3")
    error_info_of(asyncio.run(grpc_call()), grpc.StatusCode.DEADLINE_EXCEEDED, "timeout_error")

    fake.reset("500")
    error_info_of(asyncio.run(grpc_call()), grpc.StatusCode.UNAVAILABLE, "upstream_error")


def test_fallbacks_are_tried_in_order_on_other_providers(client: Any, fake: FakeUpstream) -> None:
    fake.reset("500", "500", "500")
    completion = client.chat.completions.create(
        model="gpt-with-backup", messages=user("saved by the backup")
    )
    assert completion.choices[0].message.content == "saved by the backup"
    assert completion.model == "gpt-with-backup"
    assert len(fake.requests) == 3  # the primary's three attempts; `unreachable` never connected


@pytest.mark.parametrize("failure", ["drop", "errormid"])  # a cut connection, an error event
def test_a_failure_after_the_first_chunk_ends_the_stream_with_an_in_band_error(
    gateway: TandemProcess, fake: FakeUpstream, failure: str
) -> None:
    fake.reset(failure)
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": "gpt", "stream": True, "messages": user("one two three four five")},
    )
    assert response.status_code == 200
    events = response.text.strip().split("\n\n")
    assert "[DONE]" not in response.text
    assert events[-1].startswith('data: {"error"')
    assert '"type":"upstream_error"' in events[-1]
    assert SECRET_URL not in response.text
    assert len(fake.requests) == 1  # nothing is retried once the client has a chunk


def test_invalid_upstream_json_is_502(gateway: TandemProcess, fake: FakeUpstream) -> None:
    fake.reset("badjson", "badjson", "badjson")
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json={"model": "gpt", "messages": user("x")}
    )
    assert response.status_code == 502


def test_no_upstream_url_key_or_host_reaches_a_client(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    bodies = []
    for script, model in (
        (("500",) * 3, "gpt"),
        (("400",), "gpt"),
        (("slow:3",), "gpt-once"),
        ((), "unreachable"),
    ):
        fake.reset(*script)
        bodies.append(
            httpx.post(
                f"{gateway.base_url}/v1/chat/completions",
                json={"model": model, "messages": user("x")},
                timeout=10,
            ).text
        )
    fake.reset("401")
    bodies.append(
        httpx.post(
            f"{gateway.base_url}/native/v1/chat/completions",
            json={"model": "gpt", "messages": user("x")},
        ).text
    )
    host = fake.base_url.split("//")[1].split("/")[0]
    for body in bodies:
        for secret in (SECRET_URL, UPSTREAM_KEY, host, "127.0.0.1:9", "10.9.8.7", "Traceback"):
            assert secret not in body, body
    assert "rejected the request" in bodies[1]


def test_embeddings_go_upstream(client: Any, fake: FakeUpstream) -> None:
    result = client.embeddings.create(model="gpt", input=["ab", "abc"], encoding_format="float")
    assert [d.embedding for d in result.data] == [[2.0, 0.5, -0.25], [3.0, 0.5, -0.25]]
    assert fake.requests[0].body == {
        "model": "gpt-upstream",
        "input": ["ab", "abc"],
        "encoding_format": "float",
    }


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/native/v1/chat/completions"])
async def test_http_disconnect_closes_the_upstream_within_a_second(
    gateway: TandemProcess, fake: FakeUpstream, path: str
) -> None:
    fake.reset("drip")
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        async with http.stream(
            "POST", path, json={"model": "gpt", "stream": True, "messages": user("x")}
        ) as response:
            await anext(response.aiter_lines())
        left = time.monotonic()
    await eventually_async(fake.hung_up, 2, what="the upstream call closed")
    assert fake.gone[0] - left < 1.0


async def test_grpc_cancel_and_deadline_close_the_upstream_within_a_second(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    request = chat_pb2.ChatCompletionRequest(
        model="gpt", messages=[chat_pb2.ChatMessage(role="user", content="x")]
    )
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        for how in ("cancel", "deadline"):
            fake.reset("drip")
            call = stub.StreamChatCompletion(request, timeout=0.5 if how == "deadline" else None)
            await call.read()
            if how == "cancel":
                call.cancel()
            left = time.monotonic() if how == "cancel" else time.monotonic() + 0.4
            await eventually_async(fake.hung_up, 2, what=f"the upstream call closed ({how})")
            assert fake.gone[0] - left < 1.0, how


def test_openai_api_key_adds_the_openai_provider_to_the_builtin_config(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    env = {
        "OPENAI_API_KEY": UPSTREAM_KEY,
        "OPENAI_BASE_URL": fake.base_url,
        "TANDEM_OPENAI_MODELS": "gpt-4o-mini,gpt-4.1",
    }
    process = start_tandem(tmp_path, None, env=env)
    try:
        fake.reset()
        with openai.OpenAI(base_url=f"{process.base_url}/v1", api_key="caller") as sdk:
            assert [m.id for m in sdk.models.list()] == ["echo", "gpt-4o-mini", "gpt-4.1"]
            reply = sdk.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "real provider"}]
            )
            assert reply.choices[0].message.content == "real provider"
            echo = sdk.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "mock still here"}]
            )
            assert echo.choices[0].message.content == "mock still here"
        assert fake.requests[0].body["model"] == "gpt-4.1"
        assert fake.requests[0].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    finally:
        assert process.terminate() == 0


def test_an_in_band_error_before_the_first_chunk_is_retried_then_falls_back(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("errorevent", "errorbody", "errorevent")
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": "gpt-with-backup", "stream": True, "messages": user("rescued")},
    )
    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")
    assert '"content":"rescued"' in response.text  # the mock fallback answered
    assert len(fake.requests) == 3
    fake.reset("errorbody", "errorbody", "errorbody")
    plain = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json={"model": "gpt", "messages": user("x")}
    )
    assert plain.status_code == 502
    assert SECRET_URL not in plain.text


def test_malformed_upstream_data_is_the_upstreams_fault(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("badlogprobs", "badlogprobs", "badlogprobs")
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json={"model": "gpt", "messages": user("x")}
    )
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_error"


def test_a_providers_max_connections_bounds_its_upstream_requests_in_flight(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """Two connections: the third of three slow calls reaches the upstream only once
    one of the first two has answered."""
    config = (
        "providers:\n"
        f'  - {{name: up, kind: openai, base_url: "{fake.base_url}", api_key: k,'
        " max_connections: 2, max_retries: 0}\n"
        "models:\n  - {name: gpt, provider: up}\n"
    )
    process = start_tandem(tmp_path, config)
    try:
        fake.reset("slow:1.5", "slow:1.5", "slow:1.5")

        async def call() -> int:
            async with httpx.AsyncClient(base_url=process.base_url, timeout=30) as http:
                body = {"model": "gpt", "messages": user("hi")}
                return (await http.post("/v1/chat/completions", json=body)).status_code

        async def three() -> list[int]:
            return list(await asyncio.gather(call(), call(), call()))

        assert asyncio.run(three()) == [200, 200, 200]
        arrivals = sorted(r.at for r in fake.requests)
        assert len(arrivals) == 3
        assert arrivals[2] - arrivals[0] >= 1.4  # it waited for a connection
    finally:
        assert process.terminate() == 0, process.stderr()
