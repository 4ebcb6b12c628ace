"""The Anthropic door (`/v1/messages`), driven by the official `anthropic` SDK, sync and
async, and by raw HTTP for the event order and framing: on the mock, an
OpenAI-compatible upstream (text, streamed tool calls, tool results, reasoning) and
an Anthropic upstream (text, tools, thinking). Auth, limits, cancellation and errors
on every door are in the parity matrix (test_door_parity.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anthropic
import grpc
import httpx
import jwt
import orjson
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc, usage_pb2, usage_pb2_grpc

from server.translate.anthropic.replies import StreamEncoder
from tests.fake_upstream import (
    REASONING,
    SIGNATURE,
    STOP_SEQUENCE,
    THOUGHTS,
    FakeUpstream,
)
from tests.servers import TandemProcess, usage_records
from tests.sse import named_events

SECRET = "anthropic-door-secret-0123456789abcdef"
ADMIN_KEY = "anthropic-door-admin-key"
CONFIG = f"""
providers:
  - {{name: demo, kind: mock}}
  - {{name: up, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0}}
  - {{name: claude, kind: anthropic, base_url: "%(root)s", api_key: "%(key)s", max_retries: 0}}
models:
  - {{name: echo, provider: demo}}
  - {{name: relay, provider: up, upstream: relay-upstream}}
  - {{name: claude, provider: claude, upstream: claude-x}}
tiers:
  free: {{default_model: echo}}
auth: {{required: true, admin_keys: ["{ADMIN_KEY}"], jwt: {{secret: "{SECRET}"}}}}
usage: {{store: "sqlite:///usage.db", flush_interval_ms: 20}}
"""
WEATHER: Any = {"name": "get_weather", "input_schema": {"type": "object"}}


def token(sub: str = "claude-coder") -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


@pytest.fixture
def sdk(gateway: TandemProcess, fake: FakeUpstream) -> Iterator[Any]:
    """The official SDK, typed loosely (its overloads fight the dict literals of tests)."""
    fake.reset()
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=token(), max_retries=0) as client:
        yield client


def user(text: str) -> Any:
    return [{"role": "user", "content": text}]


def events(response: httpx.Response) -> list[tuple[str, Any]]:
    """The named SSE events of a stream, in order: (event, data), each checked
    against Anthropic's documented order as it comes (`assert_documented_order`)."""
    out = named_events(response)
    assert_documented_order(out)
    return out


def assert_documented_order(seen: list[tuple[str, Any]]) -> None:
    """message_start; then blocks, each content_block_start (index 0, 1, ...), its
    deltas, content_block_stop, one at a time; then message_delta, message_stop; or,
    after the start, one `error` and nothing more. Every event's `type` is its name."""
    assert seen[0][0] == "message_start"
    open_block: int | None = None
    blocks = 0
    for position, (name, data) in enumerate(seen[1:], start=1):
        assert data["type"] == name
        if name == "error":
            assert position == len(seen) - 1, "an error ends the stream"
            return
        if name == "content_block_start":
            assert open_block is None, "a block opened inside another"
            assert data["index"] == blocks
            open_block, blocks = blocks, blocks + 1
        elif name in ("content_block_delta", "content_block_stop"):
            assert data["index"] == open_block
            if name == "content_block_stop":
                open_block = None
        elif name == "message_delta":
            assert open_block is None
            assert [n for n, _ in seen[position:]] == ["message_delta", "message_stop"]
            reasons = ("end_turn", "max_tokens", "stop_sequence", "tool_use")
            assert data["delta"]["stop_reason"] in reasons
            assert {"input_tokens", "output_tokens"} <= set(data["usage"])
            return
        else:
            raise AssertionError(f"{name} where Anthropic sends none")
    raise AssertionError("the stream ended without message_delta and message_stop")


def post(gateway: TandemProcess, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/v1/messages?beta=true",
        json=body,
        headers={"x-api-key": token(), "anthropic-version": "2023-06-01", **headers},
        timeout=30,
    )


def test_the_sdk_creates_streams_and_counts_on_echo(sdk: Any) -> None:
    message = sdk.messages.create(model="echo", max_tokens=100, messages=user("hello there"))
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", "echo")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "hello there"
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 2)

    with sdk.messages.stream(model="echo", max_tokens=100, messages=user("one two three")) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert pieces == ["one ", "two ", "three"]
    assert final.content[0].text == "one two three"
    assert final.usage.output_tokens == 3

    short = sdk.messages.create(model="echo", max_tokens=2, messages=user("one two three"))
    assert short.stop_reason == "max_tokens"
    counted = sdk.messages.count_tokens(
        model="echo", system="be brief", messages=user("one two three")
    )
    # the gateway's estimate, max(words, bytes / 4) a text: 2 for "be brief", 4 for the rest
    assert counted.input_tokens == 6


async def test_the_async_sdk_creates_and_streams(gateway: TandemProcess) -> None:
    client: Any = anthropic.AsyncAnthropic(
        base_url=gateway.base_url, auth_token=token(), max_retries=0
    )  # a Bearer token instead of x-api-key
    async with client:
        message = await client.messages.create(
            model="echo", max_tokens=50, system=[{"type": "text", "text": "x"}], messages=user("hi")
        )
        assert message.content[0].text == "hi"
        async with client.messages.stream(
            model="echo", max_tokens=50, messages=user("async words")
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
        assert text == "async words"
        counted = await client.messages.count_tokens(model="echo", messages=user("a b c"))
        assert counted.input_tokens == 3


def test_the_event_order_is_anthropics(gateway: TandemProcess) -> None:
    answer = post(
        gateway, {"model": "echo", "max_tokens": 50, "stream": True, "messages": user("a b")}
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    seen = events(answer)
    assert [name for name, _ in seen] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in seen)
    start = seen[0][1]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert start["usage"] == {"input_tokens": 2, "output_tokens": 0}
    assert seen[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [data["delta"] for name, data in seen if name == "content_block_delta"] == [
        {"type": "text_delta", "text": "a "},
        {"type": "text_delta", "text": "b"},
    ]
    assert seen[5][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert seen[5][1]["usage"]["output_tokens"] == 2


def test_errors_are_anthropics_shape_and_types(gateway: TandemProcess) -> None:
    cases = [
        ({"model": "echo", "messages": user("a")}, {}, 400, "invalid_request_error"),
        ({"model": "nope", "max_tokens": 5, "messages": user("a")}, {}, 404, "not_found_error"),
        ({"model": "echo", "max_tokens": 5, "messages": []}, {}, 400, "invalid_request_error"),
        (
            {"model": "echo", "max_tokens": 5, "messages": user("a")},
            {"x-api-key": "wrong"},
            401,
            "authentication_error",
        ),
    ]
    for body, headers, status, kind in cases:
        answer = post(gateway, body, **headers)
        assert answer.status_code == status, answer.text
        error = answer.json()
        assert error["type"] == "error"
        assert error["error"]["type"] == kind
        assert set(error["error"]) == {"type", "message"}
    missing = post(gateway, {"model": "echo", "messages": user("a")}).json()
    assert missing["error"]["message"] == "max_tokens: is required"


def test_an_openai_upstreams_tool_calls_stream_as_tool_use_blocks(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("tools")
    body = {
        "model": "relay",
        "max_tokens": 100,
        "stream": True,
        "tools": [WEATHER],
        "tool_choice": {"type": "auto"},
        "messages": user("weather?"),
    }
    seen = events(post(gateway, body))
    names = [name for name, _ in seen]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    blocks = [data["content_block"] for name, data in seen if name == "content_block_start"]
    assert blocks == [
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}},
    ]
    pieces: dict[int, str] = {}
    for name, data in seen:
        if name == "content_block_delta":
            assert data["delta"]["type"] == "input_json_delta"
            pieces[data["index"]] = pieces.get(data["index"], "") + data["delta"]["partial_json"]
    assert pieces == {0: '{"city": "Paris"}', 1: "{}"}
    assert sum(name == "content_block_delta" for name in names) == 4  # two pieces each
    assert seen[-2][1]["delta"]["stop_reason"] == "tool_use"
    sent = fake.requests[-1].body
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == "auto"


def test_a_tool_result_goes_back_in_a_follow_up_turn(sdk: Any, fake: FakeUpstream) -> None:
    fake.reset("tools")
    first = sdk.messages.create(
        model="relay", max_tokens=100, tools=[WEATHER], messages=user("weather?")
    )
    assert first.stop_reason == "tool_use"
    calls = [block for block in first.content if block.type == "tool_use"]
    assert [(c.id, c.name, c.input) for c in calls] == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("call_b", "get_time", {}),
    ]
    follow_up: list[Any] = [
        *user("weather?"),
        {"role": "assistant", "content": [c.model_dump() for c in calls]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_b",
                    "content": [{"type": "text", "text": "noon"}],
                },
                {"type": "text", "text": "so?"},
            ],
        },
    ]
    answer = sdk.messages.create(model="relay", max_tokens=100, messages=follow_up)
    assert answer.content[0].text == "so?"
    sent = fake.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool", "user"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_a", "call_b"]
    assert orjson.loads(sent[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert (sent[2]["tool_call_id"], sent[2]["content"]) == ("call_a", "sunny")
    assert (sent[3]["tool_call_id"], sent[3]["content"]) == ("call_b", "noon")


def test_reasoning_content_is_a_thinking_block(
    sdk: Any, gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("reasoning", "reasoning", "reasoning")
    with sdk.messages.stream(model="relay", max_tokens=100, messages=user("why")) as stream:
        streamed = stream.get_final_message()  # the SDK's own accumulator over our events
    assert [block.type for block in streamed.content] == ["thinking", "text"]
    assert (streamed.content[0].thinking, streamed.content[0].signature) == (REASONING, "")
    message = sdk.messages.create(model="relay", max_tokens=100, messages=user("why"))
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == REASONING
    assert message.content[1].text == "why"
    seen = events(
        post(gateway, {"model": "relay", "max_tokens": 50, "stream": True, "messages": user("why")})
    )
    starts = [data["content_block"]["type"] for name, data in seen if name == "content_block_start"]
    assert starts == ["thinking", "text"]  # thinking never leaks into the text block
    thinking = [d["delta"] for n, d in seen if n == "content_block_delta" and d["index"] == 0]
    assert [d["thinking"] for d in thinking] == list(THOUGHTS)


def test_an_anthropic_upstream_round_trips_text_tools_and_signed_thinking(
    sdk: Any, gateway: TandemProcess, fake: FakeUpstream
) -> None:
    text = sdk.messages.create(model="claude", max_tokens=100, messages=user("hello claude"))
    assert text.content[0].text == "hello claude"
    fake.reset("tools")
    with sdk.messages.stream(
        model="claude", max_tokens=100, tools=[WEATHER], messages=user("weather?")
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    tool = next(block for block in final.content if block.type == "tool_use")
    assert (tool.name, tool.input) == ("get_weather", {"city": "Paris"})

    fake.reset("reasoning")
    seen = events(
        post(
            gateway,
            {
                "model": "claude",
                "max_tokens": 2000,
                "stream": True,
                "thinking": {"type": "enabled", "budget_tokens": 1024},
                "messages": user("think"),
            },
        )
    )
    deltas = [d["delta"] for n, d in seen if n == "content_block_delta" and d["index"] == 0]
    assert [d["type"] for d in deltas][-1] == "signature_delta"
    assert deltas[-1]["signature"] == SIGNATURE
    assert "".join(d.get("thinking", "") for d in deltas) == REASONING
    assert fake.requests[-1].body["thinking"] == {"type": "enabled", "budget_tokens": 1024}

    fake.reset()
    turn: list[Any] = [
        *user("think"),
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": REASONING, "signature": SIGNATURE},
                {"type": "text", "text": "done"},
            ],
        },
        *user("again"),
    ]
    sdk.messages.create(model="claude", max_tokens=100, messages=turn)
    sent = fake.requests[-1].body["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": REASONING, "signature": SIGNATURE}


def test_a_failure_after_the_start_is_one_error_event(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("errormid")
    seen = events(
        post(
            gateway,
            {"model": "relay", "max_tokens": 50, "stream": True, "messages": user("a b c d")},
        )
    )
    assert seen[0][0] == "message_start"
    assert seen[-1][0] == "error"
    assert seen[-1][1]["type"] == "error"
    assert seen[-1][1]["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in seen]


def test_models_answer_in_anthropics_shape_when_asked(gateway: TandemProcess) -> None:
    key = {"x-api-key": token()}
    anthropic_page = httpx.get(
        f"{gateway.base_url}/v1/models", headers={**key, "anthropic-version": "2023-06-01"}
    ).json()
    assert set(anthropic_page) == {"data", "has_more", "first_id", "last_id"}
    assert anthropic_page["has_more"] is False
    first = anthropic_page["data"][0]
    assert set(first) == {"type", "id", "display_name", "created_at"}
    assert first["type"] == "model"
    assert first["created_at"].endswith("Z")
    assert (anthropic_page["first_id"], anthropic_page["last_id"]) == (
        anthropic_page["data"][0]["id"],
        anthropic_page["data"][-1]["id"],
    )
    openai_page = httpx.get(
        f"{gateway.base_url}/v1/models", headers={"authorization": f"Bearer {token()}"}
    ).json()
    assert openai_page["object"] == "list"
    assert {m["id"] for m in openai_page["data"]} == {m["id"] for m in anthropic_page["data"]}


def test_calls_are_recorded_with_protocol_anthropic(gateway: TandemProcess) -> None:
    sub = f"ledger-{time.monotonic_ns()}"
    client: Any = anthropic.Anthropic(base_url=gateway.base_url, api_key=token(sub), max_retries=0)
    with client as sdk:
        sdk.messages.create(model="echo", max_tokens=10, messages=user("count me"))
    records = usage_records(gateway, 1, ADMIN_KEY, user=sub)
    assert [(r["protocol"], r["model"], r["completion_tokens"]) for r in records] == [
        ("anthropic", "echo", 2)
    ]


def _piece(
    index: int, arguments: str, call_id: str = "", name: str = ""
) -> chat_pb2.ChatCompletionChunk:
    chunk = chat_pb2.ChatCompletionChunk(id="chatcmpl-1", model="m")
    call = chunk.choices.add(index=0).delta.tool_calls.add(index=index, id=call_id)
    call.function.name = name
    call.function.arguments = arguments
    return chunk


def test_interleaved_tool_call_pieces_never_interleave_blocks() -> None:
    encoder = StreamEncoder(prompt_tokens=1)
    chunks = [
        _piece(0, '{"a"', "call_0", "f"),
        _piece(1, '{"b"', "call_1", "g"),
        _piece(0, ": 1}"),
        _piece(1, ": 2}"),
    ]
    last = chat_pb2.ChatCompletionChunk(id="chatcmpl-1", model="m")
    last.choices.add(index=0, finish_reason="tool_calls")
    last.usage.prompt_tokens, last.usage.completion_tokens = 1, 4
    wire = b"".join(encoder.encode(chunk) for chunk in [*chunks, last])
    seen = [
        (event.split("\n")[0][7:], orjson.loads(event.split("\n")[1][6:]))
        for event in wire.decode().strip().split("\n\n")
    ]
    assert_documented_order(seen)
    opened: list[int] = []
    for name, data in seen:
        if name == "content_block_start":
            assert not opened, "a block opened inside another"
            opened.append(data["index"])
        elif name == "content_block_stop":
            assert opened.pop() == data["index"]
        elif name == "content_block_delta":
            assert opened == [data["index"]]
    arguments: dict[int, str] = {}
    for name, data in seen:
        if name == "content_block_delta":
            arguments[data["index"]] = (
                arguments.get(data["index"], "") + data["delta"]["partial_json"]
            )
    assert arguments == {0: '{"a": 1}', 1: '{"b": 2}'}
    assert seen[-2][1]["delta"]["stop_reason"] == "tool_use"


def ledger(gateway: TandemProcess, sub: str, count: int = 1) -> list[Any]:
    return usage_records(gateway, count, ADMIN_KEY, user=sub)


def test_cache_reads_and_reasoning_tokens_are_counted_on_every_door_and_kept(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    sub = f"cached-{time.monotonic_ns()}"
    fake.reset("cached")
    message = post(
        gateway,
        {"model": "relay", "max_tokens": 50, "messages": user("a b")},
        **{"x-api-key": token(sub)},
    ).json()
    # Anthropic's input_tokens leaves the cache reads out; the proto's prompt tokens hold them
    assert message["usage"] == {"input_tokens": 4, "output_tokens": 2, "cache_read_input_tokens": 3}
    [record] = ledger(gateway, sub)
    assert (record["prompt_tokens"], record["cached_tokens"], record["reasoning_tokens"]) == (
        7,
        3,
        1,
    )

    fake.reset("cached")
    answer = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": "relay", "messages": user("a b")},
        headers={"authorization": f"Bearer {token()}"},
    ).json()
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 3}
    assert answer["usage"]["completion_tokens_details"] == {"reasoning_tokens": 1}

    claude_sub = f"claude-{time.monotonic_ns()}"
    body = {"model": "claude", "max_tokens": 50, "stream": True, "messages": user("a b")}
    seen = events(post(gateway, body, **{"x-api-key": token(claude_sub)}))
    usage = seen[-2][1]["usage"]
    assert (usage["input_tokens"], usage["cache_read_input_tokens"]) == (11, 2)
    [record] = ledger(gateway, claude_sub)
    assert (record["prompt_tokens"], record["cached_tokens"]) == (13, 2)


def test_a_request_shaped_as_claude_code_sends_it(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    """What Claude Code 2.x sent, seen here: a system turn inside `messages`, text
    blocks with `cache_control`, adaptive thinking, fields the gateway does not use."""
    fake.reset()
    body = {
        "model": "relay",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are Claude Code."},
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                    {"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {"role": "system", "content": "a reminder"},
        ],
        "tools": [
            {
                "name": "Bash",
                "description": "Run a command",
                "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
            }
        ],
        "metadata": {"user_id": '{"session_id": "s-1"}'},
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
    }
    seen = events(post(gateway, body))
    assert seen[0][0] == "message_start"
    assert seen[-1][0] == "message_stop"
    sent = fake.requests[-1].body
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "system"]
    # text blocks are one string a message to an OpenAI-compatible upstream, a block a line
    assert sent["messages"][0]["content"] == "You are Claude Code.\nBe brief."
    assert sent["messages"][1]["content"] == "<system-reminder>ctx</system-reminder>\nhello"
    assert sent["user"] == '{"session_id": "s-1"}'
    assert "reasoning_effort" not in sent  # adaptive: the model decides, none is asked for
    assert sent["tools"][0]["function"]["parameters"]["properties"] == {
        "command": {"type": "string"}
    }


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_sequence_and_cache_writes_come_back_anthropics_way(
    gateway: TandemProcess, fake: FakeUpstream, stream: bool
) -> None:
    """An Anthropic upstream's `stop_sequence` stop and its cache writes: /v1/messages
    answers them as Anthropic does (they were `end_turn`, and the writes were inside
    `input_tokens`); the ledger keeps the writes beside the reads, inside the prompt."""
    sub = f"stopseq-{stream}-{time.monotonic_ns()}"
    fake.reset("stopseq")
    sdk: Any = anthropic.Anthropic(base_url=gateway.base_url, api_key=token(sub), max_retries=0)
    request = {"model": "claude", "max_tokens": 100, "stop_sequences": [STOP_SEQUENCE]}
    with sdk:
        if stream:
            with sdk.messages.stream(**request, messages=user("a b")) as events_:
                message = events_.get_final_message()
        else:
            message = sdk.messages.create(**request, messages=user("a b"))
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", STOP_SEQUENCE)
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (11, 2)  # without the cache
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (2, 5)
    assert fake.requests[-1].body["stop_sequences"] == [STOP_SEQUENCE]
    [record] = ledger(gateway, sub)
    assert (record["prompt_tokens"], record["cached_tokens"], record["cache_write_tokens"]) == (
        11 + 2 + 5,
        2,
        5,
    )


def test_a_stop_sequence_and_cache_writes_on_the_wire_and_from_an_openai_kind(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    """The raw events say them too; an OpenAI-compatible upstream says them as vLLM
    (`stop_reason` on the choice) and OpenRouter (`cache_write_tokens`) do."""
    fake.reset("stopseq", "stopseq", "stopseq")
    body = {"model": "claude", "max_tokens": 50, "stream": True, "messages": user("a b")}
    seen = events(post(gateway, body))
    delta = seen[-2][1]
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": STOP_SEQUENCE}
    assert delta["usage"] == {
        "input_tokens": 11,
        "output_tokens": 2,
        "cache_read_input_tokens": 2,
        "cache_creation_input_tokens": 5,
    }
    sub = f"relay-stopseq-{time.monotonic_ns()}"
    for streamed in (False, True):
        answer = post(
            gateway,
            {"model": "relay", "max_tokens": 50, "stream": streamed, "messages": user("a b")},
            **{"x-api-key": token(sub)},
        )
        message = events(answer)[-2][1] if streamed else answer.json()
        stop = message["delta"] if streamed else message
        assert (stop["stop_reason"], stop["stop_sequence"]) == ("stop_sequence", STOP_SEQUENCE)
        assert message["usage"]["input_tokens"] == 7 - 5
        assert message["usage"]["cache_creation_input_tokens"] == 5
    records = ledger(gateway, sub, 2)
    assert [(r["prompt_tokens"], r["cache_write_tokens"]) for r in records] == [(7, 5)] * 2


async def test_grpc_sees_the_stop_sequence_and_cache_writes_in_the_proto(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    sub = f"grpc-stopseq-{time.monotonic_ns()}"
    metadata = (("authorization", f"Bearer {token(sub)}"),)
    fake.reset("stopseq", "stopseq")
    request = chat_pb2.ChatCompletionRequest(
        model="claude", messages=[chat_pb2.ChatMessage(role="user", content="a b")]
    )
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        completion = await chat.CreateChatCompletion(request, metadata=metadata)
        chunks = [c async for c in chat.StreamChatCompletion(request, metadata=metadata)]
        finished = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
        for choice, usage in (
            (completion.choices[0], completion.usage),
            (finished[-1], chunks[-1].usage),
        ):
            assert (choice.finish_reason, choice.stop_sequence) == ("stop", STOP_SEQUENCE)
            details = usage.prompt_tokens_details
            assert (usage.prompt_tokens, details.cached_tokens, details.cache_write_tokens) == (
                18,
                2,
                5,
            )
        admin = (("authorization", f"Bearer {ADMIN_KEY}"),)
        usage_api = usage_pb2_grpc.UsageServiceStub(channel)
        deadline = time.monotonic() + 10
        records: list[Any] = []
        while len(records) < 2 and time.monotonic() < deadline:
            answer = await usage_api.GetUsage(usage_pb2.GetUsageRequest(user=sub), metadata=admin)
            records = list(answer.records)
    assert [(r.prompt_tokens, r.cached_tokens, r.cache_write_tokens) for r in records] == [
        (18, 2, 5)
    ] * 2


def test_the_openai_and_native_doors_say_cache_writes_and_native_the_stop_sequence(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    """/v1 keeps OpenAI's shape, with OpenRouter's `cache_write_tokens` beside the reads;
    native, the proto's JSON, also names the stop sequence on the choice."""
    fake.reset("stopseq", "stopseq", "stopseq")
    headers = {"authorization": f"Bearer {token()}"}
    body = {"model": "claude", "messages": user("a b")}
    openai_answer = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json=body, headers=headers
    ).json()
    assert openai_answer["usage"]["prompt_tokens"] == 18
    assert openai_answer["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 2,
        "cache_write_tokens": 5,
    }
    assert "stop_sequence" not in openai_answer["choices"][0]
    native = httpx.post(
        f"{gateway.base_url}/native/v1/chat/completions", json=body, headers=headers
    ).json()
    assert native["choices"][0]["finish_reason"] == "stop"
    assert native["choices"][0]["stop_sequence"] == STOP_SEQUENCE
    streamed = httpx.post(
        f"{gateway.base_url}/native/v1/chat/completions",
        json={**body, "stream": True},
        headers=headers,
    )
    frames = [f.removeprefix("data: ") for f in streamed.text.split("\n\n") if f.strip()]
    last = orjson.loads(frames[-2])
    assert last["choices"][0]["stop_sequence"] == STOP_SEQUENCE
    assert last["usage"]["prompt_tokens_details"]["cache_write_tokens"] == 5
