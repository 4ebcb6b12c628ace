"""Folding chunks into a completion: text, tool calls, refusals, usage."""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf.json_format import ParseDict
from tandem.v1 import chat_pb2

from server.core.fold import fold_stream


async def stream(
    *chunks: dict[str, object],
) -> AsyncIterator[list[chat_pb2.ChatCompletionChunk]]:
    """The chunks in batches of one and two: as upstream reads may bring them."""
    parsed = [ParseDict(chunk, chat_pb2.ChatCompletionChunk()) for chunk in chunks]
    while parsed:
        size = 1 if len(parsed) % 2 else 2
        yield parsed[:size]
        del parsed[:size]


async def test_text_deltas_concatenate_per_choice() -> None:
    completion = await fold_stream(
        stream(
            {
                "id": "c1",
                "created": 5,
                "model": "m",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}],
            },
            {"id": "c1", "choices": [{"index": 1, "delta": {"content": "Bon"}}]},
            {
                "id": "c1",
                "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}],
            },
            {
                "id": "c1",
                "choices": [{"index": 1, "delta": {"content": "jour"}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6},
            },
        )
    )
    assert (completion.id, completion.created, completion.model) == ("c1", 5, "m")
    assert [(c.index, c.message.content, c.finish_reason) for c in completion.choices] == [
        (0, "Hello", "stop"),
        (1, "Bonjour", "length"),
    ]
    assert completion.usage.total_tokens == 6


async def test_streamed_tool_calls_merge_by_index_and_leave_content_null() -> None:
    def piece(index: int, **call: object) -> dict[str, object]:
        return {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, **call}]}}]}

    completion = await fold_stream(
        stream(
            {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
            piece(
                0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""}
            ),
            piece(0, function={"arguments": '{"city":'}),
            piece(
                1, id="call_b", type="function", function={"name": "get_time", "arguments": "{}"}
            ),
            piece(0, function={"arguments": '"Paris"}'}),
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        )
    )
    message = completion.choices[0].message
    assert not message.HasField("content")
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("call_a", "get_weather", '{"city":"Paris"}'),
        ("call_b", "get_time", "{}"),
    ]
    assert completion.choices[0].finish_reason == "tool_calls"


async def test_refusal_and_logprobs_are_kept() -> None:
    completion = await fold_stream(
        stream(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"refusal": "I can"},
                        "logprobs": {"content": [{"token": "I", "logprob": -0.1}]},
                    }
                ]
            },
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {"refusal": "not."},
                        "logprobs": {"content": [{"token": " can", "logprob": -0.2}]},
                    }
                ]
            },
        )
    )
    choice = completion.choices[0]
    assert choice.message.refusal == "I cannot."
    assert [t.token for t in choice.logprobs.content] == ["I", " can"]
