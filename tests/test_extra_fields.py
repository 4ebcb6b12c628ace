"""OpenAI's fields the proto lacks (`extra_body`) on a live server: they reach an
`openai`-kind upstream unchanged and in order, a provider's `extra_fields` narrows
them, other kinds name what they leave out (`x-tandem-ignored-fields`, as a header on
every HTTP door and as gRPC initial metadata), and `extra_body` never names a field
the gateway decides. Reasoning sent back to an `openai`-kind upstream is named too."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anthropic
import grpc
import httpx
import orjson
import pytest
from google.protobuf import struct_pb2
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.fake_upstream import FakeUpstream
from tests.rpc_status import details_of
from tests.servers import TandemProcess

CONFIG = """
providers:
  - {name: up, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0}
  - {name: narrow, kind: openai, base_url: "%(url)s", max_retries: 0, extra_fields: [store, metadata]}
  - {name: closed, kind: openai, base_url: "%(url)s", max_retries: 0, extra_fields: deny}
  - {name: thinker, kind: openai, base_url: "%(url)s", max_retries: 0, send_reasoning: true}
  - {name: claude, kind: anthropic, base_url: "%(root)s", api_key: "%(key)s", max_retries: 0}
  - {name: claude-narrow, kind: anthropic, base_url: "%(root)s", max_retries: 0, extra_fields: [context_management]}
  - {name: lab, kind: ollama, base_url: "%(root)s", max_retries: 0}
  - {name: local, kind: mock}
models:
  - {name: gpt, provider: up, upstream: gpt-upstream}
  - {name: gpt-narrow, provider: narrow, upstream: gpt-upstream}
  - {name: gpt-closed, provider: closed, upstream: gpt-upstream}
  - {name: gpt-thinker, provider: thinker, upstream: gpt-upstream}
  - {name: haiku, provider: claude, upstream: claude-haiku-4-5, max_tokens_default: 50}
  - {name: haiku-narrow, provider: claude-narrow, upstream: claude-haiku-4-5}
  - {name: llama, provider: lab, upstream: "qwen3:1b"}
  - {name: echo, provider: local}
  - {name: haiku-then-gpt, provider: claude, upstream: claude-haiku-4-5, fallbacks: [gpt]}
  - {name: gpt-then-haiku, provider: up, upstream: gpt-upstream, fallbacks: [haiku]}
tiers:
  free: {default_model: gpt}
"""
IGNORED = "x-tandem-ignored-fields"

# every OpenAI field the issue lists, and a vLLM server's own, in the order sent
EXTRA: dict[str, Any] = {
    "store": True,
    "metadata": {"team": "search", "run": "7"},
    "service_tier": "flex",
    "prompt_cache_key": "tenant-42",
    "prediction": {"type": "content", "content": "the answer"},
    "verbosity": "low",
    "modalities": ["text"],
    "safety_identifier": "user-hash-1",
    "web_search_options": {"search_context_size": "low"},
    "repetition_penalty": 1.1,
    "guided_json": {"type": "object", "properties": {"b": {}, "a": {}}},
    "min_tokens": 3,
}


@pytest.fixture
def http(gateway: TandemProcess, fake: FakeUpstream) -> Iterator[httpx.Client]:
    fake.reset()
    with httpx.Client(base_url=gateway.base_url, timeout=10) as client:
        yield client


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def extra_sent(body: dict[str, Any]) -> dict[str, Any]:
    """What of an upstream body is not the gateway's own (the fields of EXTRA)."""
    return {key: value for key, value in body.items() if key in EXTRA}


def sse_text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    frames = [f.removeprefix("data: ") for f in response.text.split("\n\n") if f.strip()]
    assert frames[-1] == "[DONE]"
    return "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(orjson.loads, frames[:-1])
        if c["choices"]
    )


# --- to an openai-kind upstream ---------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_the_sdks_fields_reach_an_openai_upstream_unchanged(
    client: Any, fake: FakeUpstream, stream: bool
) -> None:
    vllm = {key: EXTRA[key] for key in ("repetition_penalty", "guided_json", "min_tokens")}
    raw = client.chat.completions.with_raw_response.create(
        model="gpt",
        messages=user("every field"),
        store=True,
        metadata=EXTRA["metadata"],
        service_tier="flex",
        prompt_cache_key="tenant-42",
        prediction=EXTRA["prediction"],
        verbosity="low",
        modalities=["text"],
        safety_identifier="user-hash-1",
        web_search_options=EXTRA["web_search_options"],
        extra_body=vllm,  # the SDK merges it at the top level
        stream=stream,
    )
    assert IGNORED not in raw.headers
    answer = raw.parse()
    text = (
        "".join(c.choices[0].delta.content or "" for c in answer if c.choices)
        if stream
        else answer.choices[0].message.content
    )
    assert text == "every field"
    sent = fake.requests[0].body
    assert extra_sent(sent) == EXTRA
    assert type(sent["min_tokens"]) is int
    assert (sent["model"], sent["messages"]) == ("gpt-upstream", user("every field"))
    assert sent.get("stream", False) is stream


def test_extra_fields_keep_the_callers_order_and_types(
    http: httpx.Client, fake: FakeUpstream
) -> None:
    order = ["min_tokens", "guided_json", "store", "repetition_penalty", "metadata"]
    body = {"messages": user("x"), **{key: EXTRA[key] for key in order}, "model": "gpt"}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    sent = fake.requests[0].body
    assert [key for key in sent if key in EXTRA] == order
    assert list(sent["guided_json"]["properties"]) == ["b", "a"]
    assert sent["min_tokens"] == 3
    assert type(sent["min_tokens"]) is int


def test_native_and_grpc_callers_set_extra_body_and_its_json_text_wins(
    gateway: TandemProcess, http: httpx.Client, fake: FakeUpstream
) -> None:
    body = {
        "model": "gpt",
        "messages": user("x"),
        "extra_body": {"store": True, "ignored_for_the_text": 1},
        "extra_body_json": '{"min_tokens": 3, "store": false}',
    }
    response = http.post("/native/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert IGNORED not in response.headers
    sent = fake.requests[-1].body
    assert [(k, sent[k]) for k in ("min_tokens", "store")] == [("min_tokens", 3), ("store", False)]
    assert "ignored_for_the_text" not in sent
    assert http.post("/native/v1/chat/completions", json={**body, "stoer": 1}).status_code == 400

    # an extra_body object keeps its order and its integers, and /v1 adds its own after it
    own = {"min_tokens": 3, "store": True}
    for door, more in (("/native/v1", {}), ("/v1", {"service_tier": "flex"})):
        body = {"model": "gpt", "messages": user("x"), "extra_body": own, **more}
        assert http.post(f"{door}/chat/completions", json=body).status_code == 200
        sent = fake.requests[-1].body
        assert [(k, sent[k]) for k in sent if k in EXTRA] == [*own.items(), *more.items()]
        assert type(sent["min_tokens"]) is int

    extra = struct_pb2.Struct()
    extra.update({"service_tier": "flex", "metadata": {"k": "v"}})
    request = chat_pb2.ChatCompletionRequest(
        model="gpt", messages=[chat_pb2.ChatMessage(role="user", content="x")], extra_body=extra
    )
    answer, metadata = asyncio.run(grpc_unary(gateway, request))
    assert answer.choices[0].message.content == "x"
    assert IGNORED not in metadata
    sent = fake.requests[-1].body
    assert (sent["service_tier"], sent["metadata"]) == ("flex", {"k": "v"})


def test_extra_fields_never_override_what_the_gateway_sets(
    http: httpx.Client, fake: FakeUpstream
) -> None:
    body = {"model": "gpt", "messages": user("x"), "stream": True, "custom": {"stream": False}}
    assert sse_text(http.post("/v1/chat/completions", json=body)) == "x"
    sent = fake.requests[0].body
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["custom"] == {"stream": False}


# --- a provider's extra_fields ------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "passed", "named"),
    [
        ("gpt-narrow", ["store", "metadata"], "service_tier,guided_json"),
        ("gpt-closed", [], "store,service_tier,metadata,guided_json"),
    ],
)
def test_a_providers_extra_fields_narrows_what_passes_and_names_the_rest(
    http: httpx.Client, fake: FakeUpstream, model: str, passed: list[str], named: str
) -> None:
    keys = ["store", "service_tier", "metadata", "guided_json"]
    body = {"model": model, "messages": user("x"), **{key: EXTRA[key] for key in keys}}
    for stream in (False, True):
        response = http.post("/v1/chat/completions", json={**body, "stream": stream})
        assert response.status_code == 200, response.text
        assert response.headers[IGNORED] == named
        assert list(extra_sent(fake.requests[-1].body)) == passed


# --- other kinds name what they leave out ------------------------------------------------------


@pytest.mark.parametrize("model", ["haiku", "llama", "echo"])
def test_other_kinds_leave_extra_fields_out_and_name_them_on_every_door(
    gateway: TandemProcess, http: httpx.Client, fake: FakeUpstream, model: str
) -> None:
    named = "store,metadata,repetition_penalty"
    extra = {"store": True, "metadata": {"a": "b"}, "repetition_penalty": 1.1}
    for stream in (False, True):
        body = {"model": model, "messages": user("left out"), "stream": stream, **extra}
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        assert response.headers[IGNORED] == named
        native = {**body, "extra_body_json": orjson.dumps(extra).decode()}
        for key in extra:
            del native[key]
        response = http.post("/native/v1/chat/completions", json=native)
        assert response.status_code == 200, response.text
        assert response.headers[IGNORED] == named
    for sent in fake.requests:
        assert not set(extra) & set(sent.body), sent.body

    request = chat_pb2.ChatCompletionRequest(
        model=model,
        messages=[chat_pb2.ChatMessage(role="user", content="left out")],
        extra_body_json=orjson.dumps(extra).decode(),
    )
    answer, metadata = asyncio.run(grpc_unary(gateway, request))
    assert answer.choices[0].message.content == "left out"
    assert metadata[IGNORED] == named
    chunks, metadata = asyncio.run(grpc_stream(gateway, request))
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "left out"
    assert metadata[IGNORED] == named

    # a request with no extra field names nothing
    response = http.post("/v1/chat/completions", json={"model": model, "messages": user("x")})
    assert response.status_code == 200, response.text
    assert IGNORED not in response.headers
    request.ClearField("extra_body_json")
    _, metadata = asyncio.run(grpc_unary(gateway, request))
    assert IGNORED not in metadata
    assert metadata["x-request-id"]


def test_the_attempt_that_served_says_what_was_left_out(
    http: httpx.Client, fake: FakeUpstream
) -> None:
    body = {"messages": user("x"), "store": True}
    fake.reset("500")  # the Anthropic upstream fails, the OpenAI one serves
    response = http.post("/v1/chat/completions", json={**body, "model": "haiku-then-gpt"})
    assert response.status_code == 200, response.text
    assert IGNORED not in response.headers
    assert fake.requests[-1].body["store"] is True

    fake.reset("500")  # the OpenAI upstream fails, the Anthropic one serves
    response = http.post("/v1/chat/completions", json={**body, "model": "gpt-then-haiku"})
    assert response.status_code == 200, response.text
    assert response.headers[IGNORED] == "store"


def test_the_header_is_bounded_and_spells_any_key_safely(http: httpx.Client) -> None:
    keys = {"a,b": 1, "naïve key": 2, **{f"field_{i:03}": i for i in range(300)}}
    response = http.post(
        "/v1/chat/completions", json={"model": "echo", "messages": user("x"), **keys}
    )
    assert response.status_code == 200, response.text
    value = response.headers[IGNORED]
    assert len(value) <= 1024
    names = value.split(",")
    assert names[:3] == ["a%2Cb", "na%C3%AFve%20key", "field_000"]
    kept = len(names) - 1
    assert names[-1] == f"+{len(keys) - kept} more"


# --- reasoning sent back ---------------------------------------------------------------------


def test_reasoning_sent_back_is_left_out_and_named_unless_the_provider_sends_it(
    gateway: TandemProcess, http: httpx.Client, fake: FakeUpstream
) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "answer", "reasoning_content": "old thoughts"},
        {"role": "user", "content": "again"},
    ]
    response = http.post("/v1/chat/completions", json={"model": "gpt", "messages": messages})
    assert response.status_code == 200, response.text
    assert response.headers[IGNORED] == "messages[].reasoning_content"
    assert fake.requests[-1].body["messages"][1] == {"role": "assistant", "content": "answer"}

    response = http.post(
        "/v1/chat/completions",
        json={"model": "gpt-closed", "messages": messages, "store": True},
    )
    assert response.headers[IGNORED] == "messages[].reasoning_content,store"

    response = http.post(
        "/v1/chat/completions", json={"model": "gpt-thinker", "messages": messages}
    )
    assert response.status_code == 200, response.text
    assert IGNORED not in response.headers
    assert fake.requests[-1].body["messages"][1]["reasoning_content"] == "old thoughts"


def test_the_anthropic_door_names_thinking_an_openai_upstream_does_not_take(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    with anthropic.Anthropic(base_url=gateway.base_url, api_key="unused") as sdk:
        raw = sdk.messages.with_raw_response.create(
            model="gpt",
            max_tokens=100,
            messages=[
                {"role": "user", "content": "first"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                        {"type": "text", "text": "answer"},
                    ],
                },
                {"role": "user", "content": "again"},
            ],
        )
    assert raw.headers[IGNORED] == "messages[].reasoning_content"
    assert raw.parse().content[0].text == "again"  # type: ignore[union-attr]
    assert "reasoning_content" not in fake.requests[-1].body["messages"][1]


def test_an_anthropic_upstream_names_reasoning_sent_back_without_its_signature(
    gateway: TandemProcess, http: httpx.Client, fake: FakeUpstream
) -> None:
    """Anthropic takes reasoning back only as a signed thinking block: unsigned, it is
    left out, and said; signed, it travels and nothing is named."""
    unsigned = {"role": "assistant", "content": "answer", "reasoning_content": "old thoughts"}
    signed = {**unsigned, "reasoning_signature": "sig"}
    for turn, named in ((unsigned, "messages[].reasoning_content,store"), (signed, "store")):
        fake.reset()
        messages = [user("first")[0], turn, user("again")[0]]
        body = {"model": "haiku", "messages": messages, "store": True}
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        assert response.headers[IGNORED] == named
        sent = fake.requests[-1].body["messages"][1]["content"]
        assert [b["type"] for b in sent] == (["text"] if turn is unsigned else ["thinking", "text"])
    fake.reset()
    response = http.post("/v1/chat/completions", json={"model": "haiku", "messages": [unsigned]})
    assert response.headers[IGNORED] == "messages[].reasoning_content"


# --- the Anthropic door's own fields -------------------------------------------------------

# what Claude Code sends beside the conversation (context_management, output_config), and
# more of Anthropic's top-level fields, in the order sent
ANTHROPIC_EXTRA: dict[str, Any] = {
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "high"},
    "service_tier": "auto",
    "mcp_servers": [{"type": "url", "url": "https://mcp.example/sse", "name": "docs"}],
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather",
    "input_schema": {"type": "object"},
    "cache_control": {"type": "ephemeral"},
}
CONTEXT = {"context_management": ANTHROPIC_EXTRA["context_management"]}
# a tool as Claude Code sends it with the advanced-tool-use beta, and its thinking
DEFERRED = {"name": "Grep", "input_schema": {"type": "object"}, "defer_loading": True}
THINKING = {"type": "enabled", "budget_tokens": 1024, "display": "omitted"}


def anthropic_sdk(gateway: TandemProcess) -> Any:
    """The official SDK, typed loosely (its overloads fight the dict literals of tests)."""
    return anthropic.Anthropic(base_url=gateway.base_url, api_key="unused", max_retries=0)


def anthropic_extra_sent(body: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(key, value) for key, value in body.items() if key in ANTHROPIC_EXTRA]


@pytest.mark.parametrize("stream", [False, True])
def test_the_anthropic_doors_own_fields_reach_an_anthropic_upstream_unchanged(
    gateway: TandemProcess, http: httpx.Client, fake: FakeUpstream, stream: bool
) -> None:
    request = {
        "model": "haiku",
        "max_tokens": 100,
        "messages": user("keep them"),
        "extra_body": {**ANTHROPIC_EXTRA, "container": None},  # null: not set
    }
    with anthropic_sdk(gateway) as sdk:
        if stream:
            with sdk.messages.stream(**request) as events:
                headers, text = events.response.headers, events.get_final_text()
        else:  # as Claude Code calls it: `?beta=true`, its betas as a header
            raw = sdk.beta.messages.with_raw_response.create(
                **request, betas=["context-management-2025-06-27"]
            )
            headers, text = raw.headers, raw.parse().content[0].text
    assert IGNORED not in headers
    assert text == "keep them"
    sent = fake.requests[0].body
    assert dict(anthropic_extra_sent(sent)) == ANTHROPIC_EXTRA  # the SDK orders them its way
    assert set(list(sent)[-len(ANTHROPIC_EXTRA) :]) == set(ANTHROPIC_EXTRA)  # after the gateway's
    assert "container" not in sent
    assert (sent["model"], sent["max_tokens"]) == ("claude-haiku-4-5", 100)
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "keep them"}]}
    ]
    assert sent.get("stream", False) is stream

    # in the order written
    fake.reset()
    order = ["mcp_servers", "output_config", "service_tier", "context_management"]
    extra = {key: ANTHROPIC_EXTRA[key] for key in order}
    body = {"messages": user("x"), **extra, "max_tokens": 10, "model": "haiku", "stream": stream}
    response = http.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    assert anthropic_extra_sent(fake.requests[0].body) == list(extra.items())

    # the same fields from `/v1` are OpenAI's dialect: left out, and named
    fake.reset()
    body = {"model": "haiku", "messages": user("x"), "store": True, **CONTEXT}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.headers[IGNORED] == "store,context_management"
    assert not {"store", "context_management"} & set(fake.requests[0].body)


@pytest.mark.parametrize("model", ["gpt", "llama", "echo"])
def test_the_anthropic_doors_fields_reach_no_other_kind_and_are_named(
    gateway: TandemProcess, fake: FakeUpstream, model: str
) -> None:
    fake.reset()
    named = sorted(ANTHROPIC_EXTRA)  # in the order the SDK sends them
    with anthropic_sdk(gateway) as sdk:
        raw = sdk.messages.with_raw_response.create(
            model=model, max_tokens=100, messages=user("not here"), extra_body=ANTHROPIC_EXTRA
        )
        assert sorted(raw.headers[IGNORED].split(",")) == named
        assert raw.parse().content[0].text == "not here"
        with sdk.messages.stream(
            model=model, max_tokens=100, messages=user("not here"), extra_body=ANTHROPIC_EXTRA
        ) as events:
            assert sorted(events.response.headers[IGNORED].split(",")) == named
            assert events.get_final_text() == "not here"
    for sent in fake.requests:
        assert not set(ANTHROPIC_EXTRA) & set(sent.body), sent.body


def test_an_anthropic_providers_extra_fields_narrows_what_passes_and_names_the_rest(
    http: httpx.Client, fake: FakeUpstream
) -> None:
    body = {"model": "haiku-narrow", "max_tokens": 10, "messages": user("x"), **ANTHROPIC_EXTRA}
    for stream in (False, True):
        response = http.post("/v1/messages", json={**body, "stream": stream})
        assert response.status_code == 200, response.text
        assert response.headers[IGNORED] == "output_config,service_tier,mcp_servers"
        assert anthropic_extra_sent(fake.requests[-1].body) == list(CONTEXT.items())


def test_a_field_the_proto_has_stays_ignored_on_the_anthropic_door_and_is_named(
    http: httpx.Client, fake: FakeUpstream
) -> None:
    body = {
        "model": "haiku",
        "max_tokens": 100,
        "messages": user("x"),
        "n": 3,
        "max_completion_tokens": 5,
        "stop": ["never"],
        "user": None,  # null: not set, nothing to name
        **CONTEXT,
    }
    response = http.post("/v1/messages", json=body)
    assert response.status_code == 200, response.text
    assert response.headers[IGNORED] == "n,max_completion_tokens,stop"
    sent = fake.requests[0].body
    assert sent["max_tokens"] == 100
    assert not {"n", "max_completion_tokens", "stop", "stop_sequences", "user"} & set(sent)
    assert anthropic_extra_sent(sent) == list(CONTEXT.items())

    # vLLM's `best_of` is work no usage counts, refused by name as on /v1
    response = http.post("/v1/messages", json={**body, "best_of": 2})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("best_of: ")


def test_the_anthropic_doors_fields_count_in_its_estimate(gateway: TandemProcess) -> None:
    with anthropic_sdk(gateway) as sdk:
        plain = sdk.messages.count_tokens(model="haiku", messages=user("x"))
        more = sdk.messages.count_tokens(model="haiku", messages=user("x"), extra_body=CONTEXT)
    assert more.input_tokens > plain.input_tokens


@pytest.mark.parametrize(
    ("model", "named"),
    [
        ("haiku", "tools[].defer_loading,tools[].input_examples,thinking.display"),
        ("gpt", "tools[].defer_loading,tools[].input_examples,thinking.display,context_management"),
    ],
)
def test_what_the_proto_cannot_carry_of_tools_and_thinking_is_named(
    gateway: TandemProcess, fake: FakeUpstream, model: str, named: str
) -> None:
    fake.reset()
    examples = {**DEFERRED, "name": "Glob", "input_examples": [{"pattern": "*.py"}]}
    with anthropic_sdk(gateway) as sdk:
        raw = sdk.messages.with_raw_response.create(
            model=model,
            max_tokens=2000,
            messages=user("find it"),
            tools=[DEFERRED, examples, WEATHER_TOOL],
            thinking=THINKING,
            extra_body=CONTEXT,
        )
    assert raw.headers[IGNORED] == named
    sent = fake.requests[0].body
    assert (anthropic_extra_sent(sent) == list(CONTEXT.items())) is (model == "haiku")
    assert [sorted(tool) for tool in sent["tools"]] == (
        [["input_schema", "name"]] * 2 + [["cache_control", "description", "input_schema", "name"]]
        if model == "haiku"
        else [["function", "type"]] * 3
    )


@pytest.mark.parametrize(
    ("model", "named", "served_with_context"),
    [
        ("haiku-then-gpt", "tools[].defer_loading,context_management", False),
        ("gpt-then-haiku", "tools[].defer_loading", True),
    ],
)
def test_every_attempt_names_what_the_door_left_out_before_its_own(
    gateway: TandemProcess, fake: FakeUpstream, model: str, named: str, served_with_context: bool
) -> None:
    fake.reset("500")  # the first attempt fails, the fallback serves
    with anthropic_sdk(gateway) as sdk:
        raw = sdk.messages.with_raw_response.create(
            model=model, max_tokens=100, messages=user("x"), tools=[DEFERRED], extra_body=CONTEXT
        )
    assert raw.headers[IGNORED] == named
    first, served = (request.body for request in fake.requests)
    assert ("context_management" in first) is not served_with_context
    assert ("context_management" in served) is served_with_context


# --- what extra_body may not name ------------------------------------------------------------


@pytest.mark.parametrize(
    ("door", "fields", "param"),
    [
        ("/native/v1", {"extra_body": {"model": "other"}}, "extra_body.model"),
        ("/native/v1", {"extra_body_json": '{"ok": 1, "max_tokens": 9}'}, "extra_body.max_tokens"),
        ("/native/v1", {"extra_body_json": '{"stream_options": {}}'}, "extra_body.stream_options"),
        ("/native/v1", {"extra_body_json": "{not json"}, "extra_body_json"),
        ("/native/v1", {"extra_body_json": "[1, 2]"}, "extra_body_json"),
        ("/native/v1", {"extra_body_json": "[" * 300 + "]" * 300}, "extra_body_json"),
        ("/native/v1", {"extra_body_json": '{"a":' * 300 + "1" + "}" * 300}, "extra_body_json"),
        ("/v1", {"extra_body": {"n": 3}, "store": True}, "extra_body.n"),
        ("/v1", {"extra_body": {"messages": []}}, "extra_body.messages"),
        ("/v1", {"best_of": 4}, "best_of"),  # vLLM's: work no usage counts, named as sent
        ("/v1", {"extra_body": {"best_of": 4}}, "extra_body.best_of"),
    ],
)
def test_extra_body_naming_a_field_the_gateway_decides_is_a_400(
    http: httpx.Client, fake: FakeUpstream, door: str, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "gpt", "messages": user("x"), **fields}
    response = http.post(f"{door}/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"].startswith(f"{param}: ")
    assert fake.requests == []


def test_a_grpc_extra_body_naming_a_field_is_invalid_argument(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    extra = struct_pb2.Struct()
    extra.update({"stream": False})
    request = chat_pb2.ChatCompletionRequest(
        model="gpt", messages=[chat_pb2.ChatMessage(role="user", content="x")], extra_body=extra
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        asyncio.run(grpc_stream(gateway, request))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = details_of(caught.value)
    assert details.bad_request is not None
    assert details.bad_request.field_violations[0].field == "extra_body.stream"
    assert fake.requests == []


# --- gRPC ---------------------------------------------------------------------------------


async def grpc_unary(
    gateway: TandemProcess, request: chat_pb2.ChatCompletionRequest
) -> tuple[chat_pb2.ChatCompletion, dict[str, Any]]:
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        call = chat_pb2_grpc.ChatServiceStub(channel).CreateChatCompletion(request)
        answer = await call
        return answer, dict(await call.initial_metadata())


async def grpc_stream(
    gateway: TandemProcess, request: chat_pb2.ChatCompletionRequest
) -> tuple[list[chat_pb2.ChatCompletionChunk], dict[str, Any]]:
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        call = chat_pb2_grpc.ChatServiceStub(channel).StreamChatCompletion(request)
        chunks = [chunk async for chunk in call]
        return chunks, dict(await call.initial_metadata())
