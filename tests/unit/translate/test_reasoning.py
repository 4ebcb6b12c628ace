"""Reasoning in process: a budget and an effort mapped to every provider dialect, the
fold of reasoning deltas, and the encoder's way around its plain-text fast path (the
same through real doors and upstreams: tests/test_reasoning_and_top_k.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from google.protobuf.json_format import ParseDict
from tandem.v1 import chat_pb2

from server.core.fold import fold_stream
from server.errors import InvalidRequestError
from server.translate.anthropic import to_provider as anthropic
from server.translate.ollama import to_provider as ollama
from server.translate.openai.inbound import parse_chat
from server.translate.openai.replies import StreamEncoder
from server.translate.openai.to_provider import encode_chat_request


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_a_budget_and_an_effort_give_the_lower_level_everywhere() -> None:
    def sent(fields: dict[str, Any]) -> tuple[Any, Any, Any]:
        request = chat_pb2.ChatCompletionRequest(
            messages=[chat_pb2.ChatMessage(role="user", content="x")], **fields
        )
        to_anthropic = anthropic.encode_chat_request(
            request, "c", max_tokens_default=10, stream=False
        )
        to_openai = encode_chat_request(request, "o", stream=False)
        to_ollama = ollama.encode_chat_request(request, "m", stream=False)
        budget = to_anthropic.get("thinking", {}).get("budget_tokens")
        return budget, to_openai.get("reasoning_effort"), to_ollama.get("think")

    assert sent({}) == (None, None, None)
    assert sent({"reasoning_budget_tokens": 1024}) == (1024, "low", "low")
    assert sent({"reasoning_budget_tokens": 4095}) == (4095, "low", "low")
    assert sent({"reasoning_budget_tokens": 16384}) == (16384, "high", "high")
    both = {"reasoning_budget_tokens": 5000, "reasoning_effort": "high"}
    assert sent(both) == (5000, "medium", "medium")
    both = {"reasoning_budget_tokens": 5000, "reasoning_effort": "minimal"}
    assert sent(both) == (1024, "minimal", "low")


def test_anthropic_forced_tool_choice_with_reasoning_is_refused() -> None:
    request = parse_chat(
        {
            "messages": user("x"),
            "reasoning_effort": "low",
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "required",
        },
        strict=True,
    )
    with pytest.raises(InvalidRequestError) as caught:
        anthropic.encode_chat_request(request, "c", max_tokens_default=10, stream=False)
    assert caught.value.param == "tool_choice"


def test_every_reasoning_effort_maps_for_ollama_and_anthropic() -> None:
    for effort in ("minimal", "low", "medium", "high"):
        request = parse_chat({"messages": user("x"), "reasoning_effort": effort}, strict=True)
        assert ollama.encode_chat_request(request, "m", stream=False)["think"] in (
            "low",
            "medium",
            "high",
        )
        body = anthropic.encode_chat_request(request, "c", max_tokens_default=10, stream=False)
        assert body["max_tokens"] > body["thinking"]["budget_tokens"] >= 1024


async def test_reasoning_deltas_fold_into_the_message_with_the_last_signature() -> None:
    async def chunks() -> Any:
        for delta in (
            {"role": "assistant", "reasoning_content": "a "},
            {"reasoning_content": "b"},
            {"reasoning_signature": "s1"},
            {"reasoning_signature": "s2"},
            {"content": "done"},
        ):
            yield [
                ParseDict(
                    {"choices": [{"index": 0, "delta": delta}]}, chat_pb2.ChatCompletionChunk()
                )
            ]

    message = (await fold_stream(chunks())).choices[0].message
    assert (message.reasoning_content, message.reasoning_signature, message.content) == (
        "a b",
        "s2",
        "done",
    )

    async def plain() -> Any:
        yield [
            ParseDict(
                {"choices": [{"index": 0, "delta": {"content": "x"}}]},
                chat_pb2.ChatCompletionChunk(),
            )
        ]

    folded = (await fold_stream(plain())).choices[0].message
    assert not folded.HasField("reasoning_content")
    assert not folded.HasField("reasoning_signature")


def test_a_reasoning_delta_leaves_the_plain_text_fast_path() -> None:
    chunk = chat_pb2.ChatCompletionChunk(id="c", created=1, model="m")
    chunk.choices.add(index=0).delta.reasoning_content = "hmm"
    encoder = StreamEncoder(chunk, with_object=True, usage="none", prefix=b"", suffix=b"")
    assert orjson.loads(encoder.encode(chunk))["choices"][0]["delta"] == {
        "reasoning_content": "hmm"
    }
    chunk.choices[0].delta.content = "and text"
    assert orjson.loads(encoder.encode(chunk))["choices"][0]["delta"] == {
        "content": "and text",
        "reasoning_content": "hmm",
    }
