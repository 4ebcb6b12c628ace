"""The OpenAI dialect: union forms, strict parsing, and the encoder's fast path."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tandem.v1 import chat_pb2

from server.core.errors import InvalidRequestError
from server.translate import openai
from server.translate.openai import ChunkEncoder, _chunk_choices

texts = st.text(max_size=50)


@given(texts, st.sampled_from(["none", "separate", "inline"]), st.booleans())
def test_fast_path_writes_exactly_what_the_general_path_writes(
    text: str, usage: str, with_object: bool
) -> None:
    chunk = chat_pb2.ChatCompletionChunk(id="c", created=1, model="m")
    chunk.choices.add(index=0).delta.content = text
    encoder = ChunkEncoder(chunk, with_object=with_object, usage=usage)
    tail = b',"usage":null}\n\n' if usage == "separate" else b"}\n\n"
    general = encoder._head + orjson.dumps(_chunk_choices(chunk)) + tail
    assert encoder.encode(chunk) == general
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
    request = openai.parse_chat_request(body, strict=strict)
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
            "messages[0].parts[0].txt",
        ),
        ({"logit_bias": {"1": "x"}}, "logit_bias.1"),
        ({"n": True}, "n"),
        ({"n": 2**31}, "n"),
    ],
)
def test_strict_parse_names_the_path(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        openai.parse_chat_request(body, strict=True)
    assert caught.value.param == param


def test_lenient_parse_skips_unknown_fields_at_any_depth() -> None:
    body = {
        "messages": [{"role": "user", "content": "x", "audio": None, "mood": 1}],
        "store": True,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
    }
    request = openai.parse_chat_request(body, strict=False)
    assert request.stream_options.include_usage
    assert request.messages[0].content == "x"


def test_null_means_not_set() -> None:
    request = openai.parse_chat_request(
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
