"""The `anthropic` provider through the doors, on a fake upstream (its translation, in
process: tests/unit/translate/test_anthropic.py)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from google.protobuf.json_format import ParseDict
from tandem.v1 import chat_pb2

from server.translate.anthropic import to_provider as anthropic
from tests.fake_upstream import UPSTREAM_KEY, FakeUpstream
from tests.servers import TandemProcess, streamed_over_grpc, streamed_over_sdk

CONFIG = """
providers:
  - {name: claude, kind: anthropic, base_url: "%(root)s", api_key: "%(key)s", max_retries: 1}
  - {name: local, kind: mock}
models:
  - {name: haiku, provider: claude, upstream: claude-haiku-4-5, max_tokens_default: 50}
  - {name: echo, provider: local}
tiers:
  free: {default_model: haiku}
"""


def test_non_streaming_through_the_openai_door(client: Any, fake: FakeUpstream) -> None:
    completion = client.chat.completions.create(
        model="haiku",
        messages=[
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hello claude"},
        ],
    )
    assert completion.choices[0].message.content == "hello claude"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (13, 2)
    sent = fake.requests[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == UPSTREAM_KEY
    assert sent.headers["anthropic-version"] == anthropic.ANTHROPIC_VERSION
    assert sent.body["model"] == "claude-haiku-4-5"
    assert sent.body["max_tokens"] == 50
    assert sent.body["system"] == "sys"


def test_streaming_with_usage_and_length(client: Any, fake: FakeUpstream) -> None:
    chunks = streamed_over_sdk(client, "haiku", "one two three four", max_tokens=2)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two "
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    assert chunks[-1].usage.prompt_tokens == 13
    assert chunks[-1].usage.completion_tokens == 2


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_becomes_tool_calls(client: Any, fake: FakeUpstream, stream: bool) -> None:
    fake.reset("tools")
    args: dict[str, Any] = {"model": "haiku", "messages": [{"role": "user", "content": "weather?"}]}
    if stream:
        chunks = list(client.chat.completions.create(**args, stream=True))
        pieces = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        assert pieces[0].id == "toolu_1"
        assert pieces[0].function.name == "get_weather"
        assert "".join(p.function.arguments or "" for p in pieces) == '{"city": "Paris"}'
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
    else:
        message = client.chat.completions.create(**args).choices[0].message
        assert message.content == "Let me check."
        assert message.tool_calls[0].function.arguments == '{"city":"Paris"}'


def test_native_and_grpc_doors(gateway: TandemProcess, fake: FakeUpstream) -> None:
    fake.reset()
    reply = httpx.post(
        f"{gateway.base_url}/native/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "native to claude"}]},
    ).json()
    assert (
        ParseDict(reply, chat_pb2.ChatCompletion()).choices[0].message.content == "native to claude"
    )

    chunks = streamed_over_grpc(gateway, "grpc to claude")
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "grpc to claude"
    assert chunks[-1].usage.total_tokens == 13 + 3


def test_unsupported_field_is_a_400_naming_it_on_every_door(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": "haiku", "n": 2, "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert fake.requests == []


def test_an_upstream_error_event_mid_stream_ends_the_stream_in_band(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("overloaded")
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": "haiku", "stream": True, "messages": [{"role": "user", "content": "a b c"}]},
    )
    assert response.status_code == 200
    assert "[DONE]" not in response.text
    assert '"type":"upstream_error"' in response.text.strip().split("\n\n")[-1]
