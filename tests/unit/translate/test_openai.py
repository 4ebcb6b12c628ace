"""The OpenAI dialect: union forms, strict parsing, and the encoder's fast path for text."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tandem.v1 import chat_pb2

from server.errors import InvalidRequestError
from server.translate.openai import from_provider, inbound, to_provider
from server.translate.openai.replies import StreamEncoder, _chunk_choices

texts = st.text(max_size=50)


@given(texts, st.sampled_from(["none", "separate", "inline"]), st.booleans())
def test_a_text_item_is_written_exactly_as_the_general_path_writes_its_chunk(
    text: str, usage: str, with_object: bool
) -> None:
    chunk = chat_pb2.ChatCompletionChunk(id="c", created=1, model="m")
    chunk.choices.add(index=0).delta.content = text
    encoder = StreamEncoder(
        chunk, with_object=with_object, usage=usage, prefix=b"data: ", suffix=b"\n\n"
    )
    tail = b',"usage":null}\n\n' if usage == "separate" else b"}\n\n"
    general = encoder._head + orjson.dumps(_chunk_choices(chunk, native=not with_object)) + tail
    assert encoder.encode(text) == general
    event = orjson.loads(general[6:])
    assert event["choices"][0]["delta"] == {"content": text}


@given(
    stop=st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=4)),
    tool_choice=st.sampled_from(["none", "auto", "required"]),
    parts=st.lists(st.text(max_size=10), min_size=1, max_size=4),
    strict=st.booleans(),
)
def test_union_forms_become_the_protos_single_forms(
    stop: str | list[str], tool_choice: str, parts: list[str], strict: bool
) -> None:
    body = {
        "model": "m",
        "stop": stop,
        "tool_choice": tool_choice,
        "messages": [
            {"role": "system", "content": "plain"},
            {"role": "user", "content": [{"type": "text", "text": p} for p in parts]},
        ],
    }
    original = orjson.dumps(body)
    request = inbound.parse_chat(body, strict=strict)
    assert list(request.stop) == ([stop] if isinstance(stop, str) else stop)
    assert request.tool_choice.mode == tool_choice
    assert request.messages[0].content == "plain"
    assert [p.text for p in request.messages[1].parts] == parts
    assert not request.messages[1].HasField("content")
    assert orjson.dumps(body) == original  # the caller's body is never modified


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "messages": [],
                "response_format": {"type": "json_schema", "json_schema": {"nme": "x"}},
            },
            "response_format.json_schema.nme",
        ),
        (
            {"messages": [{"role": "user", "parts": [{"type": "text", "txt": "x"}]}]},
            "messages[0].parts[0].txt",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "txt": "x"}]}]},
            "messages[0].content[0].txt",
        ),
        ({"logit_bias": {"1": "x"}}, "logit_bias.1"),
        ({"n": True}, "n"),
        ({"n": 2**31}, "n"),
    ],
)
def test_strict_parse_names_the_path(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        inbound.parse_chat(body, strict=True)
    assert caught.value.param == param


def test_lenient_parse_skips_unknown_fields_at_any_depth() -> None:
    body = {
        "messages": [{"role": "user", "content": "x", "audio": None, "mood": 1}],
        "store": True,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
    }
    request = inbound.parse_chat(body, strict=False)
    assert request.stream_options.include_usage
    assert request.messages[0].content == "x"


def test_null_means_not_set() -> None:
    request = inbound.parse_chat(
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "a",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                }
            ],
            "temperature": None,
        },
        strict=True,
    )
    assert not request.HasField("temperature")
    assert not request.messages[0].HasField("content")
    assert request.messages[0].tool_calls[0].function.name == "f"


finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
chat_messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "developer", "user", "assistant"]),
            "content": st.text(max_size=20),
        }
    ),
    min_size=1,
    max_size=5,
)


@given(
    messages=chat_messages,
    optional=st.fixed_dictionaries(
        {},
        optional={
            "temperature": st.floats(0, 2),
            "top_p": st.floats(0, 1),
            "max_tokens": st.integers(1, 10_000),
            "max_completion_tokens": st.integers(1, 10_000),
            "n": st.integers(1, 4),
            "seed": st.integers(-(2**63), 2**63 - 1),
            "presence_penalty": st.floats(-2, 2),
            "frequency_penalty": st.floats(-2, 2),
            "logprobs": st.booleans(),
            "top_logprobs": st.integers(0, 20),
            "parallel_tool_calls": st.booleans(),
            "user": st.text(max_size=10),
            "stop": st.lists(st.text(min_size=1, max_size=5), max_size=4),
            "logit_bias": st.dictionaries(
                st.from_regex(r"[0-9]{1,5}", fullmatch=True), st.integers(-100, 100), max_size=3
            ),
            "tool_choice": st.sampled_from(["none", "auto", "required"]),
            "tools": st.lists(
                st.from_regex(r"[a-z_]{1,10}", fullmatch=True).map(
                    lambda n: {
                        "type": "function",
                        "function": {
                            "name": n,
                            "description": "d",
                            "parameters": {"type": "object"},
                        },
                    }
                ),
                max_size=3,
            ),
            "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}]),
        },
    ),
    stream=st.booleans(),
)
def test_upstream_request_round_trips_every_field(
    messages: list[dict[str, str]], optional: dict[str, object], stream: bool
) -> None:
    """Whatever a caller sends reaches an OpenAI-compatible upstream unchanged."""
    request = inbound.parse_chat({"model": "public", "messages": messages, **optional}, strict=True)
    # as the upstream reads it (a schema goes as pre-encoded JSON)
    body = orjson.loads(
        orjson.dumps(to_provider.encode_chat_request(request, "upstream-name", stream=stream))
    )
    assert body["model"] == "upstream-name"
    assert body["messages"] == messages
    for key, value in optional.items():
        if value in ([], "", {}):  # empty is "not set", in proto3 and OpenAI's API alike
            assert key not in body
        else:
            assert body[key] == value, key
    assert ("stream_options" in body) == stream
    again = inbound.parse_chat({**body, "model": "public"}, strict=False)
    again.ClearField("stream")
    again.ClearField("stream_options")
    assert again == request


@pytest.mark.parametrize("streamed", [False, True])
def test_only_a_stop_string_that_ended_a_choice_is_its_stop_sequence(streamed: bool) -> None:
    """vLLM's `stop_reason` is the stop string that matched, a stop token's id, or null."""

    def stop_of(item: dict[str, Any]) -> str | None:
        if streamed:
            chunk = from_provider.event_chunk({"choices": [{"index": 0, "delta": {}, **item}]})
        else:
            message = {"role": "assistant", "content": "x"}
            chunk = from_provider.decode_completion(
                {"choices": [{"index": 0, "message": message, **item}]}
            )
        choice = chunk.choices[0]
        return choice.stop_sequence if choice.HasField("stop_sequence") else None

    assert stop_of({"finish_reason": "stop", "stop_reason": "END"}) == "END"
    assert stop_of({"finish_reason": "stop", "stop_reason": 128001}) is None
    assert stop_of({"finish_reason": "stop", "stop_reason": None}) is None
    assert stop_of({"finish_reason": "stop"}) is None
    assert stop_of({"finish_reason": "length", "stop_reason": "END"}) is None


def test_a_tool_messages_image_is_held_back_named_its_text_sent() -> None:
    """OpenAI's chat API takes text only in a tool message (an image there is a 400, and
    an agent resends its history every turn): the image is held back, named."""
    image = {"url": "data:image/png;base64,iVBORw0KGgo="}
    request = inbound.parse_chat(
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": image}]},
                {
                    "role": "tool",
                    "tool_call_id": "c1",
                    "content": [
                        {"type": "text", "text": "a.png:"},
                        {"type": "image_url", "image_url": image},
                    ],
                },
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "t"}]},
            ]
        },
        strict=False,
    )
    held: list[str] = []
    sent = to_provider.encode_chat_request(request, "m", stream=False, left_out=held)
    user, tool, text_only = sent["messages"]
    assert user["content"] == [{"type": "image_url", "image_url": image}]  # a user's stays
    assert tool == {"role": "tool", "content": "a.png:", "tool_call_id": "c1"}
    assert text_only["content"] == [{"type": "text", "text": "t"}]
    assert held == ["messages[tool].content[]"]
