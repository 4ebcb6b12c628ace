"""The Ollama door (`/api`), driven by the official `ollama` library, sync and async, and
by raw HTTP for what the library hides: NDJSON framing, error shapes, a stream that
fails mid-way, tool calls sent whole. Auth, limits, cancellation and the ledger on
this door are in the parity matrix (test_door_parity.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import ollama
import orjson
import pytest
from tandem.v1 import models_pb2, models_pb2_grpc

from tests.eventually import eventually_async
from tests.fake_upstream import REASONING, FakeUpstream
from tests.servers import TandemProcess

CONFIG = """
server: {max_body_bytes: 65536}
providers:
  - {name: demo, kind: mock}
  - {name: up, kind: openai, base_url: "%(url)s", api_key: k, max_retries: 0}
  - {name: lazy, kind: openai, base_url: "%(url)s", api_key: k, max_retries: 0, timeout_s: 0.3}
models:
  - {name: echo, provider: demo}
  - {name: relay, provider: up}
  - {name: hidden, provider: demo}
  - {name: tardy, provider: lazy}
tiers:
  free: {default_model: echo, models: [echo, relay, tardy]}
usage: {store: "sqlite:///usage.db", flush_interval_ms: 20}
"""


@pytest.fixture
def client(gateway: TandemProcess) -> Iterator[ollama.Client]:
    with ollama.Client(host=gateway.base_url) as client:
        yield client


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def ndjson(answer: httpx.Response) -> list[dict[str, Any]]:
    assert answer.headers["content-type"] == "application/x-ndjson"
    assert answer.text.endswith("\n")
    return [orjson.loads(line) for line in answer.text.splitlines()]


def test_chat_whole_and_streamed(client: ollama.Client) -> None:
    whole = client.chat(model="echo", messages=user("hello there you"), stream=False)
    assert (whole.message.role, whole.message.content) == ("assistant", "hello there you")
    assert (whole.done, whole.done_reason) == (True, "stop")
    assert (whole.prompt_eval_count, whole.eval_count) == (3, 3)
    parts = list(client.chat(model="echo", messages=user("hello there you"), stream=True))
    assert [p.message.content for p in parts] == ["hello ", "there ", "you", ""]
    assert [p.done for p in parts] == [False, False, False, True]
    last = parts[-1]
    assert (last.done_reason, last.prompt_eval_count, last.eval_count) == ("stop", 3, 3)
    assert last.total_duration is not None
    assert last.eval_duration is not None
    assert last.total_duration >= last.eval_duration >= 0


def test_generate_whole_and_streamed(client: ollama.Client) -> None:
    whole = client.generate(model="echo", prompt="make this", system="be brief", stream=False)
    assert (whole.response, whole.done, whole.done_reason) == ("make this", True, "stop")
    assert (whole.prompt_eval_count, whole.eval_count) == (4, 2)  # system words count too
    parts = list(client.generate(model="echo", prompt="make this now", stream=True))
    assert "".join(p.response or "" for p in parts) == "make this now"
    assert parts[-1].done
    assert parts[-1].eval_count == 3


def test_options_are_honoured(client: ollama.Client) -> None:
    cut = client.chat(model="echo", messages=user("one two three four"), options={"num_predict": 2})
    assert (cut.message.content, cut.done_reason) == ("one two ", "length")


@pytest.mark.parametrize("no_limit", [-1, -2])
def test_num_predict_minus_one_and_minus_two_mean_no_limit(
    client: ollama.Client, fake: FakeUpstream, no_limit: int
) -> None:
    """-1 is Ollama's documented default (its clients send it), -2 fills the context."""
    options = {"num_predict": no_limit}
    chat = client.chat(model="echo", messages=user("one two three"), options=options)
    assert (chat.message.content, chat.done_reason) == ("one two three", "stop")
    generated = client.generate(model="echo", prompt="four five", options=options, stream=False)
    assert (generated.response, generated.done_reason) == ("four five", "stop")
    streamed = list(client.chat(model="echo", messages=user("six"), options=options, stream=True))
    assert "".join(p.message.content or "" for p in streamed) == "six"
    fake.reset()
    client.chat(model="relay", messages=user("seven"), options=options)
    sent = fake.requests[-1].body
    assert "max_tokens" not in sent
    assert "max_completion_tokens" not in sent


@pytest.mark.parametrize("value", [0, -3])
def test_another_num_predict_below_one_is_a_400_naming_the_option(
    client: ollama.Client, value: int
) -> None:
    for call in (
        lambda: client.chat(model="echo", messages=user("x"), options={"num_predict": value}),
        lambda: client.generate(model="echo", prompt="x", options={"num_predict": value}),
    ):
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert refused.value.status_code == 400
        assert "options.num_predict" in refused.value.error
        assert "max_tokens" not in refused.value.error


def test_listings_show_the_tiers_models(client: ollama.Client) -> None:
    assert [m.model for m in client.list().models] == ["echo", "relay", "tardy"]
    assert [m.model for m in client.ps().models] == ["echo", "relay", "tardy"]
    shown = client.show("echo")
    assert shown.details is not None
    assert shown.details.family == "demo"  # the provider that serves it
    assert shown.capabilities == ["completion"]  # none configured (test_ollama_clients.py)
    with pytest.raises(ollama.ResponseError) as hidden:
        client.show("hidden")
    assert hidden.value.status_code == 403


def test_a_tag_resolves_to_the_configured_name(client: ollama.Client) -> None:
    answer = client.chat(model="echo:latest", messages=user("tagged"), stream=False)
    assert answer.message.content == "tagged"
    assert client.show("echo:latest").details is not None
    with pytest.raises(ollama.ResponseError) as other:
        client.chat(model="echo:7b", messages=user("x"), stream=False)
    assert other.value.status_code == 404
    assert "echo:7b" in other.value.error


def test_embed_and_the_older_embeddings(client: ollama.Client) -> None:
    both = client.embed(model="echo", input=["a", "b c"])
    assert len(both.embeddings) == 2
    assert {len(v) for v in both.embeddings} == {64}
    one = client.embed(model="echo", input="a")
    assert one.embeddings == [both.embeddings[0]]
    older = client.embeddings(model="echo", prompt="a")
    assert list(older.embedding) == list(both.embeddings[0])


def test_the_version_is_one_current_clients_accept(gateway: TandemProcess) -> None:
    version = httpx.get(f"{gateway.base_url}/api/version").json()["version"]
    # a release's number, past tools, thinking, formats, VS Code's minimum (0.6.4) and
    # tool call ids (0.12.10), which the door sends
    assert tuple(int(x) for x in version.split(".")) >= (0, 12, 10)


async def test_the_async_client(gateway: TandemProcess) -> None:
    async with ollama.AsyncClient(host=gateway.base_url) as client:
        await _async_calls(client)


async def _async_calls(client: ollama.AsyncClient) -> None:
    whole = await client.chat(model="echo", messages=user("async hi"), stream=False)
    assert whole.message.content == "async hi"
    parts = [p async for p in await client.chat(model="echo", messages=user("a b"), stream=True)]
    assert "".join(p.message.content or "" for p in parts) == "a b"
    generated = await client.generate(model="echo", prompt="g h", stream=False)
    assert generated.response == "g h"
    assert [m.model for m in (await client.list()).models] == ["echo", "relay", "tardy"]
    assert (await client.show("relay")).details is not None
    assert len((await client.embed(model="echo", input="x")).embeddings) == 1


def test_raw_ndjson_framing_and_the_default_stream(gateway: TandemProcess) -> None:
    body = {"model": "echo", "messages": user("framed as lines")}  # stream defaults to true
    lines = ndjson(httpx.post(f"{gateway.base_url}/api/chat", json=body))
    assert [line["done"] for line in lines] == [False, False, False, True]
    last = lines[-1]
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(last[key], int), key
    assert all(line["model"] == "echo" and line["created_at"].endswith("Z") for line in lines)


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        (
            {"model": "echo", "messages": user("x"), "options": {"temperature": "hot"}},
            400,
            "options.temperature",
        ),
        ({"model": "echo", "messages": user("x"), "format": 3}, 400, "format"),
        ({"model": "echo", "messages": "x"}, 400, "messages"),
        ({"model": "echo", "prompt": "x", "suffix": "y"}, 400, "suffix"),
        ({"model": "nope", "messages": user("x")}, 404, "nope"),
        ({"model": "hidden", "messages": user("x")}, 403, "hidden"),
        ({"model": "echo", "messages": user("x" * 70_000)}, 413, "limit"),
    ],
    ids=[
        "option-type",
        "format",
        "messages",
        "suffix",
        "unknown-model",
        "outside-tier",
        "too-large",
    ],
)
def test_errors_are_ollamas_shape(
    gateway: TandemProcess, body: dict[str, Any], status: int, names: str
) -> None:
    path = "/api/generate" if "prompt" in body else "/api/chat"
    answer = httpx.post(f"{gateway.base_url}{path}", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert list(error) == ["error"]
    assert isinstance(error["error"], str)
    assert names in error["error"]
    assert answer.headers["x-request-id"]


def test_a_failure_mid_stream_is_one_error_line(gateway: TandemProcess, fake: FakeUpstream) -> None:
    fake.reset("errormid")
    answer = httpx.post(
        f"{gateway.base_url}/api/chat", json={"model": "relay", "messages": user("a b c d")}
    )
    assert answer.status_code == 200
    lines = ndjson(answer)
    assert [line.get("done") for line in lines[:-1]] == [False, False]
    assert list(lines[-1]) == ["error"]
    assert "127.0.0.1" not in answer.text
    assert "secret" not in answer.text


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_are_sent_whole_with_object_arguments(
    client: ollama.Client, fake: FakeUpstream, stream: bool
) -> None:
    fake.reset("tools")
    tools = [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    ]
    if stream:
        parts = list(
            client.chat(model="relay", messages=user("weather?"), tools=tools, stream=True)
        )
        with_calls = [p for p in parts if p.message.tool_calls]
        assert len(with_calls) == 1, parts
        message = with_calls[0].message
        assert parts[-1].done
    else:
        message = client.chat(model="relay", messages=user("weather?"), tools=tools).message
    assert message.tool_calls is not None
    calls = [(c.function.name, dict(c.function.arguments)) for c in message.tool_calls]
    assert calls == [("get_weather", {"city": "Paris"}), ("get_time", {})]
    sent = fake.requests[-1].body
    assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_a_tool_call_turn_goes_back_upstream(client: ollama.Client, fake: FakeUpstream) -> None:
    fake.reset("ok")
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "user", "content": "thanks"},
    ]
    answer = client.chat(model="relay", messages=messages, stream=False)
    assert answer.message.content == "thanks"
    sent = fake.requests[-1].body["messages"]
    [call] = sent[1]["tool_calls"]
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert (sent[2]["role"], sent[2]["tool_call_id"]) == ("tool", call["id"])


def test_the_ids_a_caller_sends_back_reach_the_upstream(
    client: ollama.Client, fake: FakeUpstream
) -> None:
    """Ollama's clients send a call's `id` back, and a result's `tool_call_id`: as sent."""
    fake.reset("ok")
    calls = [
        {"id": "call_a1", "function": {"name": "f", "arguments": {}}},
        {"id": "call_b2", "function": {"name": "f", "arguments": {"n": 2}}},
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "twice"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "content": "two", "tool_name": "f", "tool_call_id": "call_b2"},
        {"role": "tool", "content": "one", "tool_name": "f", "tool_call_id": "call_a1"},
        {"role": "user", "content": "thanks"},
    ]
    httpx.post(
        f"{client._client.base_url}/api/chat",
        json={"model": "relay", "messages": messages, "stream": False},
    ).raise_for_status()
    sent = fake.requests[-1].body["messages"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_a1", "call_b2"]
    assert [(m["content"], m["tool_call_id"]) for m in sent[2:4]] == [
        ("two", "call_b2"),
        ("one", "call_a1"),
    ]


async def test_every_listing_shows_the_same_catalogue(gateway: TandemProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        tags = [m["model"] for m in (await http.get("/api/tags")).json()["models"]]
        openai = [m["id"] for m in (await http.get("/v1/models")).json()["data"]]
        native = [m["id"] for m in (await http.get("/native/v1/models")).json()["data"]]
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        listed = await models_pb2_grpc.ModelServiceStub(channel).ListModels(
            models_pb2.ListModelsRequest()
        )
    assert tags == openai == native == [m.id for m in listed.data] == ["echo", "relay", "tardy"]


async def test_the_door_records_usage_as_ollama(gateway: TandemProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.base_url) as http:
        body = {"model": "echo", "prompt": "count me", "stream": False}
        answer = await http.post("/api/generate", json=body)
        assert answer.is_success
        request_id = answer.headers["x-request-id"]

        async def recorded() -> list[dict[str, Any]]:  # the ledger is written in batches
            usage = await http.get("/native/v1/usage", params={"model": "echo"})
            return [r for r in usage.json()["records"] if r["request_id"] == request_id]

        (record,) = await eventually_async(recorded)
    assert (record["protocol"], record["status"], record["completion_tokens"]) == (
        "ollama",
        "ok",
        2,
    )


@pytest.mark.parametrize("stream", [False, True])
def test_think_and_top_k_reach_the_upstream_and_thinking_comes_back(
    client: ollama.Client, fake: FakeUpstream, stream: bool
) -> None:
    fake.reset("reasoning")
    messages = [*user("deep question")]
    if stream:
        parts = list(client.chat(model="relay", messages=messages, think=True, stream=True))
        thinking = "".join(p.message.thinking or "" for p in parts)
        content = "".join(p.message.content or "" for p in parts)
    else:
        answer = client.chat(model="relay", messages=messages, think="high", stream=False)
        thinking, content = answer.message.thinking or "", answer.message.content or ""
    assert (thinking, content) == (REASONING, "deep question")
    sent = fake.requests[-1].body
    assert sent["reasoning_effort"] == ("medium" if stream else "high")


def test_top_k_is_refused_by_name_for_an_openai_kind(
    client: ollama.Client, fake: FakeUpstream
) -> None:
    fake.reset("ok")
    seen = len(fake.requests)
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model="relay", messages=user("x"), options={"top_k": 5}, stream=False)
    assert refused.value.status_code == 400
    assert "top_k" in refused.value.error
    assert len(fake.requests) == seen
    echoed = client.chat(model="echo", messages=user("mock ignores it"), options={"top_k": 5})
    assert echoed.message.content == "mock ignores it"


def test_a_bad_think_is_a_400_naming_it(gateway: TandemProcess) -> None:
    body = {"model": "echo", "messages": user("x"), "think": "maximum"}
    answer = httpx.post(f"{gateway.base_url}/api/chat", json=body)
    assert answer.status_code == 400
    assert "think" in answer.json()["error"]


@pytest.mark.parametrize(("behaviour", "status"), [("503", 502), ("slow:2", 504)])
@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_failure_before_the_first_chunk_is_a_plain_status(
    gateway: TandemProcess, fake: FakeUpstream, behaviour: str, status: int, stream: bool
) -> None:
    fake.reset(behaviour)
    body = {"model": "tardy", "messages": user("x"), "stream": stream}
    answer = httpx.post(f"{gateway.base_url}/api/chat", json=body, timeout=10)
    assert answer.status_code == status, answer.text
    assert list(answer.json()) == ["error"]
    assert answer.headers["x-should-retry"] == "false"
