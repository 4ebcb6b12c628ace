"""Anthropic's prompt caching through the gateway: `cache_control` on system blocks,
content blocks, tool calls, tool results and tools, and the caller's `anthropic-beta`,
reach an Anthropic upstream as sent, from `/v1/messages` (the official `anthropic` SDK),
`/v1` (the `openai` SDK's content parts, as LiteLLM and OpenRouter take them),
`/native/v1` and gRPC, retries and fallbacks included; the cache's reads and writes come
back on every door and into the ledger; an OpenAI-compatible upstream gets none of it."""

from __future__ import annotations

import uuid
from typing import Any

import anthropic
import grpc
import httpx
import openai
import orjson
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc

from server.translate.anthropic.to_provider import ANTHROPIC_VERSION
from tests.eventually import eventually
from tests.fake_upstream import FakeUpstream
from tests.servers import TandemProcess

CONFIG = """
providers:
  - {name: claude, kind: anthropic, base_url: "%(root)s", api_key: "%(key)s", max_retries: 1}
  - {name: claude-b, kind: anthropic, base_url: "%(root)s", api_key: "%(key)s", max_retries: 0}
  - {name: up, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0}
models:
  - {name: claude, provider: claude, upstream: claude-x}
  - {name: flaky, provider: claude-b, upstream: claude-y, fallbacks: [claude]}
  - {name: relay, provider: up, upstream: relay-upstream}
tiers:
  free: {default_model: claude}
usage: {store: "sqlite:///usage.db", flush_interval_ms: 20}
"""
BETA = "prompt-caching-2024-07-31,fine-grained-tool-streaming-2025-05-14"
EPHEMERAL = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}

# what Claude Code sends: system blocks, the last one marked; tools, the last one marked;
# the conversation, its last user block marked
SYSTEM: list[Any] = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
    {"type": "text", "text": "Be brief.", "cache_control": HOUR},
]
COMMAND = {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}
TOOLS = [
    {"name": "Read", "description": "Read a file", "input_schema": {"type": "object"}},
    {
        "name": "Bash",
        "description": "Run a command",
        "input_schema": COMMAND,
        "cache_control": EPHEMERAL,
    },
]
CLAUDE_CODE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
            {"type": "text", "text": "list the files"},
        ],
    },
    {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "ls will do", "signature": "sig-1"},
            {"type": "text", "text": "Listing."},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}},
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt\nb.txt"},
            {"type": "text", "text": "now read them", "cache_control": EPHEMERAL},
        ],
    },
]
# a mark on every kind of block that takes one
EVERY_MARK = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "see", "cache_control": EPHEMERAL},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"},
                "cache_control": EPHEMERAL,
            },
        ],
    },
    {
        "role": "assistant",
        "content": [
            {
                "type": "tool_use",
                "id": "toolu_1",
                "name": "Read",
                "input": {"path": "a.txt"},
                "cache_control": EPHEMERAL,
            }
        ],
    },
    {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_1",
                "content": [
                    {"type": "text", "text": "line 1"},
                    {"type": "text", "text": "line 2", "cache_control": HOUR},
                ],
                "cache_control": EPHEMERAL,
            },
            {"type": "text", "text": "thanks"},
        ],
    },
]


def record(gateway: TandemProcess, request_id: str) -> dict[str, Any]:
    """The ledger's record of one request, once the batcher wrote it."""

    def written() -> dict[str, Any] | None:
        found = httpx.get(f"{gateway.base_url}/native/v1/usage").json()["records"]
        return next((dict(r) for r in found if r["request_id"] == request_id), None)

    return eventually(written, what=f"a record of {request_id}")


def cache_counts(gateway: TandemProcess, request_id: str) -> tuple[int, int, int]:
    found = record(gateway, request_id)
    return found["prompt_tokens"], found["cached_tokens"], found["cache_write_tokens"]


def sent_conversation(fake: FakeUpstream) -> dict[str, Any]:
    body = fake.requests[-1].body
    return {name: body[name] for name in ("system", "tools", "messages")}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("messages", [CLAUDE_CODE, EVERY_MARK], ids=["claude-code", "every-mark"])
def test_the_anthropic_door_sends_blocks_marks_and_beta_as_written(
    gateway: TandemProcess, fake: FakeUpstream, messages: list[Any], stream: bool
) -> None:
    fake.reset("cachewrite")
    request_id = uuid.uuid4().hex
    request: Any = {"model": "claude", "max_tokens": 1000, "system": SYSTEM, "tools": TOOLS}
    headers = {"x-request-id": request_id, "x-caller-note": "stays here"}
    sdk: Any = anthropic.Anthropic(base_url=gateway.base_url, api_key="caller", max_retries=0)
    with sdk:
        if stream:
            with sdk.messages.stream(
                **request, messages=messages, extra_headers={**headers, "anthropic-beta": BETA}
            ) as events:
                message = events.get_final_message()
        else:  # as Claude Code calls it: `/v1/messages?beta=true`, the betas as one header
            message = sdk.beta.messages.create(
                **request, messages=messages, betas=BETA.split(","), extra_headers=headers
            )
    assert sent_conversation(fake) == {"system": SYSTEM, "tools": TOOLS, "messages": messages}
    sent = fake.requests[-1].headers
    assert sent["anthropic-beta"] == BETA
    assert sent["anthropic-version"] == ANTHROPIC_VERSION
    assert "x-caller-note" not in {name.lower() for name in sent}  # only the beta travels
    usage = message.usage  # Anthropic's split: input_tokens without the cache
    assert (usage.input_tokens, usage.output_tokens) == (11, len(message.content[0].text.split()))
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (2, 5)
    assert cache_counts(gateway, request_id) == (11 + 2 + 5, 2, 5)


# the same conversation as an OpenAI client writes it, marks where LiteLLM and OpenRouter
# take them: on content parts, a message, a tool call, a tool
OPENAI_MESSAGES = [
    {"role": "system", "content": [{"type": "text", "text": "Be helpful.", "cache_control": HOUR}]},
    {"role": "user", "content": [{"type": "text", "text": "weather?", "cache_control": EPHEMERAL}]},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                "cache_control": EPHEMERAL,
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny", "cache_control": EPHEMERAL},
    {"role": "user", "content": "and tomorrow?", "cache_control": HOUR},
]
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
        "cache_control": EPHEMERAL,
    }
]
AS_ANTHROPIC = {
    "system": [{"type": "text", "text": "Be helpful.", "cache_control": HOUR}],
    "tools": [
        {"name": "get_weather", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}
    ],
    "messages": [
        {
            "role": "user",
            "content": [{"type": "text", "text": "weather?", "cache_control": EPHEMERAL}],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                    "cache_control": EPHEMERAL,
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_1",
                    "content": "sunny",
                    "cache_control": EPHEMERAL,
                },
                {"type": "text", "text": "and tomorrow?", "cache_control": HOUR},
            ],
        },
    ],
}


@pytest.mark.parametrize("stream", [False, True])
def test_the_openai_door_sends_marks_on_parts_and_tools_to_anthropic(
    gateway: TandemProcess, fake: FakeUpstream, stream: bool
) -> None:
    fake.reset("cachewrite")
    request_id = uuid.uuid4().hex
    headers = {"anthropic-beta": BETA, "x-request-id": request_id}
    sdk: Any = openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="caller", max_retries=0)
    with sdk:
        answer = sdk.chat.completions.create(
            model="claude",
            messages=OPENAI_MESSAGES,
            tools=OPENAI_TOOLS,
            extra_headers=headers,
            stream=stream,
            **({"stream_options": {"include_usage": True}} if stream else {}),
        )
        usage = [chunk for chunk in answer][-1].usage if stream else answer.usage
    assert sent_conversation(fake) == AS_ANTHROPIC
    assert fake.requests[-1].headers["anthropic-beta"] == BETA
    assert usage.prompt_tokens == 11 + 2 + 5
    assert usage.prompt_tokens_details.model_dump(exclude_none=True) == {
        "cached_tokens": 2,
        "cache_write_tokens": 5,  # OpenRouter's name for them
    }
    assert cache_counts(gateway, request_id) == (18, 2, 5)


def test_the_native_door_sends_marks_and_beta_to_anthropic(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    native = httpx.post(
        f"{gateway.base_url}/native/v1/chat/completions",
        json={"model": "claude", "messages": OPENAI_MESSAGES, "tools": OPENAI_TOOLS},
        headers={"anthropic-beta": BETA},
    )
    assert native.status_code == 200, native.text  # the strict parser knows the marks
    assert sent_conversation(fake) == AS_ANTHROPIC
    assert fake.requests[-1].headers["anthropic-beta"] == BETA


async def test_grpc_sends_marks_and_its_beta_metadata_to_anthropic(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    part = chat_pb2.ContentPart(
        type="text", text="hi", cache_control=chat_pb2.CacheControl(type="ephemeral", ttl="5m")
    )
    request = chat_pb2.ChatCompletionRequest(
        model="claude", messages=[chat_pb2.ChatMessage(role="user", parts=[part])]
    )
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        completion = await chat.CreateChatCompletion(request, metadata=(("anthropic-beta", BETA),))
        assert completion.usage.prompt_tokens_details.cached_tokens == 2
        assert fake.requests[-1].body["messages"] == [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "hi", "cache_control": {**EPHEMERAL, "ttl": "5m"}}
                ],
            }
        ]
        assert fake.requests[-1].headers["anthropic-beta"] == BETA
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await chat.CreateChatCompletion(request, metadata=(("anthropic-beta", "x" * 1025),))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "anthropic-beta" in (refused.value.details() or "")
    assert len(fake.requests) == 1


def test_an_openai_compatible_upstream_gets_no_mark_and_no_beta(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    claude_code = {
        "model": "relay",
        "max_tokens": 100,
        "system": SYSTEM,
        "tools": TOOLS,
        "messages": CLAUDE_CODE,
    }
    headers = {"anthropic-beta": BETA}
    answer = httpx.post(f"{gateway.base_url}/v1/messages", json=claude_code, headers=headers)
    assert answer.status_code == 200, answer.text
    openai_body = {"model": "relay", "messages": OPENAI_MESSAGES, "tools": OPENAI_TOOLS}
    answer = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json=openai_body, headers=headers
    )
    assert answer.status_code == 200, answer.text
    for sent in fake.requests:
        assert b"cache_control" not in orjson.dumps(sent.body)
        assert "anthropic-beta" not in {name.lower() for name in sent.headers}
    # Anthropic's text blocks are one string each message, as OpenAI-compatible servers
    # take them (Groq refuses parts in a system message); a /v1 caller's parts stay parts
    from_anthropic, from_openai = (sent.body["messages"] for sent in fake.requests)
    assert from_anthropic[0]["content"] == f"{SYSTEM[0]['text']}\n{SYSTEM[1]['text']}"
    assert all(isinstance(m["content"], str | None) for m in from_anthropic), from_anthropic
    assert any(isinstance(m["content"], list) for m in from_openai), from_openai


@pytest.mark.parametrize(
    ("model", "upstreams"), [("claude", ["claude-x"] * 2), ("flaky", ["claude-y", "claude-x"])]
)
def test_retries_and_fallbacks_send_the_beta_again(
    gateway: TandemProcess, fake: FakeUpstream, model: str, upstreams: list[str]
) -> None:
    fake.reset("503")
    answer = httpx.post(
        f"{gateway.base_url}/v1/messages",
        json={"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        headers={"anthropic-beta": BETA},
    )
    assert answer.status_code == 200, answer.text
    assert [sent.body["model"] for sent in fake.requests] == upstreams
    assert [sent.headers["anthropic-beta"] for sent in fake.requests] == [BETA, BETA]


def test_an_unfit_beta_header_is_the_callers_400(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    body = {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    for beta in ("x" * 1025, "caf\u00e9"):
        answer = httpx.post(
            f"{gateway.base_url}/v1/messages",
            json=body,
            headers=[(b"anthropic-beta", beta.encode("latin-1"))],
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] == "invalid_request_error"
        assert "anthropic-beta" in answer.json()["error"]["message"]
    assert fake.requests == []


@pytest.mark.parametrize(
    ("mark", "param"),
    [
        ({"type": "forever"}, "messages[0].content[0].cache_control.type"),
        ({"type": "ephemeral", "ttl": "x" * 5000}, "messages[0].content[0].cache_control.ttl"),
    ],
)
def test_an_unfit_mark_on_v1_is_a_400_before_any_upstream_call(
    gateway: TandemProcess, fake: FakeUpstream, mark: dict[str, Any], param: str
) -> None:
    fake.reset()
    part = {"type": "text", "text": "x", "cache_control": mark}
    body = {"model": "claude", "messages": [{"role": "user", "content": [part]}]}
    answer = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    assert fake.requests == []


def test_an_image_in_a_system_message_to_anthropic_is_a_400(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    """Anthropic's `system` takes text blocks only: said up front, not dropped."""
    fake.reset()
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    system = {"role": "system", "content": [{"type": "text", "text": "look"}, image]}
    body = {"model": "claude", "messages": [system, {"role": "user", "content": "hi"}]}
    answer = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "messages[0].content[1]"
    assert fake.requests == []
