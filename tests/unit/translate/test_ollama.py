"""The Ollama dialect: a chat request as /api/chat takes it, and what Ollama cannot honour
refused by name (a fake Ollama through the doors: tests/test_provider_ollama.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.errors import InvalidRequestError
from server.translate.ollama import to_provider as ollama
from server.translate.openai.inbound import parse_chat
from tests.unit.translate.messages import image_then_tool_call

texts = st.text(min_size=1, max_size=20)


def test_sampling_goes_under_options_and_images_travel_as_base64() -> None:
    request = parse_chat(
        {
            "messages": [
                {"role": "developer", "content": "sys"},
                *image_then_tool_call("c", '{"x": 1}'),
            ],
            "temperature": 0.2,
            "max_tokens": 7,
            "stop": "END",
            "seed": 3,
            "response_format": {"type": "json_object"},
        },
        strict=True,
    )
    body = ollama.encode_chat_request(request, "m", stream=True)
    assert body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "see", "images": ["QUJD"]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {"x": 1}}}],
        },
    ]
    assert body["options"] == {"temperature": 0.2, "seed": 3, "num_predict": 7, "stop": ["END"]}
    assert body["format"] == "json"
    assert body["stream"] is True


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 3}, "n"),
        ({"logit_bias": {"1": 1}}, "logit_bias"),
        ({"logprobs": True}, "logprobs"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_what_ollama_cannot_honour_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    request = parse_chat({"messages": [{"role": "user", "content": "x"}], **fields}, strict=True)
    with pytest.raises(InvalidRequestError) as caught:
        ollama.encode_chat_request(request, "m", stream=False)
    assert caught.value.param == param


@given(
    messages=st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant"]), "content": texts}
        ),
        min_size=1,
        max_size=6,
    ),
    tools=st.lists(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), max_size=3),
    options=st.fixed_dictionaries(
        {},
        optional={
            "temperature": st.floats(0, 2),
            "top_p": st.floats(0, 1),
            "seed": st.integers(0, 2**31),
            "presence_penalty": st.floats(-2, 2),
            "frequency_penalty": st.floats(-2, 2),
            "max_tokens": st.integers(1, 5000),
            "stop": st.lists(texts, min_size=1, max_size=3),
        },
    ),
)
def test_translation_loses_no_message_tool_or_supported_field(
    messages: list[dict[str, str]], tools: list[str], options: dict[str, Any]
) -> None:
    body = {
        "messages": messages,
        "tools": [{"type": "function", "function": {"name": n}} for n in tools],
        **options,
    }
    sent = ollama.encode_chat_request(parse_chat(body, strict=True), "m", stream=False)
    assert [(m["role"], m["content"]) for m in sent["messages"]] == [
        (m["role"], m["content"]) for m in messages
    ]
    assert [t["function"]["name"] for t in sent.get("tools", [])] == tools
    expected = {("num_predict" if k == "max_tokens" else k): v for k, v in options.items()}
    assert sent.get("options", {}) == expected


@given(st.sampled_from(["n", "logit_bias", "logprobs", "top_logprobs", "tool_choice"]))
def test_every_unsupported_field_is_refused_by_name(field: str) -> None:
    values: dict[str, Any] = {
        "n": 2,
        "logit_bias": {"1": 1},
        "logprobs": True,
        "top_logprobs": 1,
        "tool_choice": "required",
    }
    request = parse_chat(
        {"messages": [{"role": "user", "content": "x"}], field: values[field]}, strict=True
    )
    with pytest.raises(InvalidRequestError) as caught:
        ollama.encode_chat_request(request, "m", stream=True)
    assert caught.value.param == field
