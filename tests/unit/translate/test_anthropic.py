"""The Anthropic dialect in process: a chat request as the Messages API takes it, what
it cannot honour refused by name, its stream events as chunks, and the door's parser
refusing a cache mark that does not fit by where it was written (through real doors
and a fake upstream: tests/test_provider_anthropic.py, tests/test_prompt_caching.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tandem.v1 import chat_pb2

from server.chunks import whole
from server.errors import InvalidRequestError
from server.translate.anthropic import from_provider as anthropic_answers
from server.translate.anthropic import inbound as anthropic_inbound
from server.translate.anthropic import to_provider as anthropic
from server.translate.openai.inbound import parse_chat
from tests.unit.translate.messages import image_then_tool_call

texts = st.text(min_size=1, max_size=20)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": texts}
    ),
    min_size=1,
    max_size=6,
)
tools = st.lists(
    st.from_regex(r"[a-z_]{1,12}", fullmatch=True).map(
        lambda name: {"type": "function", "function": {"name": name}}
    ),
    max_size=3,
)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"system": [{"type": "text", "text": "x", "cache_control": "yes"}]},
            "system[0].cache_control",
        ),
        ({"tools": [{"name": "f", "cache_control": {"ttl": "1h"}}]}, "tools[0].cache_control.type"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "text",
                                "text": "x",
                                "cache_control": {"type": "ephemeral", "ttl": 5},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].cache_control.ttl",
        ),
        (
            {"system": [{"type": "text", "text": "x", "cache_control": {"type": "forever"}}]},
            "system[0].cache_control.type",
        ),
        (
            {"tools": [{"name": "f", "cache_control": {"type": "ephemeral", "ttl": "1 week"}}]},
            "tools[0].cache_control.ttl",
        ),
    ],
)
def test_an_unfit_mark_is_refused_by_where_it_was_written(body: dict[str, Any], param: str) -> None:
    request = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
        **body,
    }
    with pytest.raises(InvalidRequestError) as refused:
        anthropic_inbound.parse_chat(request)
    assert refused.value.param == param


def translate(body: dict[str, Any], *, stream: bool = False) -> dict[str, Any]:
    request = parse_chat(body, strict=True)
    translated = anthropic.encode_chat_request(
        request, "claude-x", max_tokens_default=321, stream=stream
    )
    wire: dict[str, Any] = orjson.loads(orjson.dumps(translated))  # as the upstream reads it
    return wire


def test_system_messages_become_the_system_field_and_max_tokens_defaults() -> None:
    body = translate(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": "and kind"},
                {"role": "user", "content": "hi"},
            ],
            "stop": "END",
            "temperature": 0.3,
            "user": "u1",
        }
    )
    assert body == {
        "model": "claude-x",
        "max_tokens": 321,
        "system": "be brief\n\nand kind",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "metadata": {"user_id": "u1"},
    }
    assert (
        translate({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 9})[
            "max_tokens"
        ]
        == 9
    )


def test_tools_tool_calls_and_results_translate() -> None:
    body = translate(
        {
            "messages": [
                *image_then_tool_call("t1", '{"a": 1}'),
                {"role": "tool", "tool_call_id": "t1", "content": "42"},
                {"role": "user", "content": "thanks"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "description": "adds",
                        "parameters": {"type": "object"},
                    },
                }
            ],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        }
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "see"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]
    assert body["tools"] == [
        {"name": "f", "description": "adds", "input_schema": {"type": "object"}}
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"temperature": 1.5}, "temperature"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"seed": 1}, "seed"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
    ],
)
def test_what_anthropic_cannot_honour_is_refused_by_name(
    fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        translate({"messages": [{"role": "user", "content": "x"}], **fields})
    assert caught.value.param == param


@given(
    messages=messages,
    tools=tools,
    temperature=st.none() | st.floats(0, 1),
    top_p=st.none() | st.floats(0, 1),
    max_tokens=st.none() | st.integers(1, 10_000),
    stop=st.lists(texts, max_size=4),
)
def test_translation_loses_no_message_tool_or_supported_field(
    messages: list[dict[str, str]],
    tools: list[dict[str, Any]],
    temperature: float | None,
    top_p: float | None,
    max_tokens: int | None,
    stop: list[str],
) -> None:
    request: dict[str, Any] = {"messages": messages, "tools": tools, "stop": stop}
    for name, value in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens)):
        if value is not None:
            request[name] = value
    body = translate(request)
    system = [m["content"] for m in messages if m["role"] == "system"]
    assert body.get("system", "") == "\n\n".join(system)
    turns = [(m["role"], m["content"]) for m in messages if m["role"] != "system"]
    sent = [(t["role"], b["text"]) for t in body["messages"] for b in t["content"]]
    assert sent == turns
    assert all(
        a["role"] != b["role"] for a, b in zip(body["messages"], body["messages"][1:], strict=False)
    )
    assert [t["name"] for t in body.get("tools", [])] == [t["function"]["name"] for t in tools]
    assert body.get("stop_sequences", []) == stop
    assert body.get("temperature") == temperature
    assert body.get("top_p") == top_p
    assert body["max_tokens"] == (max_tokens or 321)


def test_extra_fields_follow_in_order_and_never_override_what_the_gateway_sets() -> None:
    request = parse_chat(
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 7}, strict=True
    )
    gateway = anthropic.encode_chat_request(
        request, "claude-x", max_tokens_default=321, stream=True
    )
    extra = {
        "model": "other",
        "output_config": {"effort": "high"},
        "max_tokens": 1,
        "stream": False,
        "messages": [],
        "context_management": {"edits": []},
    }
    request.extra_body_json = orjson.dumps(extra).decode()  # unchecked: the translator's guard
    body = anthropic.encode_chat_request(
        request, "claude-x", max_tokens_default=321, stream=True, extra_fields="allow"
    )
    assert list(body.items()) == [
        *gateway.items(),
        ("output_config", {"effort": "high"}),
        ("context_management", {"edits": []}),
    ]


@given(st.sampled_from(anthropic.UNSUPPORTED_FIELDS), st.integers(1, 5))
def test_every_unsupported_field_is_refused_by_name(field: str, value: int) -> None:
    values: dict[str, Any] = {
        "logit_bias": {"7": value},
        "logprobs": True,
        "top_logprobs": value,
        "presence_penalty": value / 10,
        "frequency_penalty": value / 10,
        "seed": value,
    }
    with pytest.raises(InvalidRequestError) as caught:
        translate({"messages": [{"role": "user", "content": "x"}], field: values[field]})
    assert caught.value.param == field


def test_stream_events_become_chunks() -> None:
    translator = anthropic_answers.StreamDecoder()
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}
            },
        },
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "tu", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a":'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "1}"},
        },
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 7},
        },
        {"type": "message_stop"},
    ]
    items = [c for c in map(translator.feed, events) if c is not None]
    assert items[1] == "Hi"  # a text delta is its bare text (server/chunks.py)
    chunks = [whole(item) for item in items]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[1].choices[0].delta.content == "Hi"
    assert (
        chunks[2].choices[0].delta.tool_calls[0].id,
        chunks[2].choices[0].delta.tool_calls[0].function.name,
    ) == ("tu", "f")
    assert (
        "".join(c.choices[0].delta.tool_calls[0].function.arguments for c in chunks[3:5])
        == '{"a":1}'
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage == chat_pb2.Usage(
        prompt_tokens=15,  # cache reads included, as the proto counts them
        completion_tokens=7,
        total_tokens=22,
        prompt_tokens_details=chat_pb2.PromptTokensDetails(cached_tokens=5),
    )


def test_without_the_callers_bound_or_a_model_default_max_tokens_is_refused() -> None:
    """Anthropic requires `max_tokens`: the provider always passes the model's default;
    a call without one, and a request without a bound, is refused by name."""
    request = parse_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(InvalidRequestError) as raised:
        anthropic.encode_chat_request(request, "claude-x", stream=False)
    assert raised.value.param == "max_tokens"
    request.max_tokens = 7
    assert anthropic.encode_chat_request(request, "claude-x", stream=False)["max_tokens"] == 7
