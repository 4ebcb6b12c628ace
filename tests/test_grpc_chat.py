"""Chat over a real grpc.aio channel to a real `tandem serve`, answered by the mock."""

from __future__ import annotations

import re

import grpc
import pytest
from google.protobuf.json_format import MessageToDict, ParseDict
from tandem.v1 import chat_pb2, chat_pb2_grpc

CONTRACT_REQUEST = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def request(text: str, **fields: object) -> chat_pb2.ChatCompletionRequest:
    body = {"model": "echo", "messages": [{"role": "user", "content": text}], **fields}
    return ParseDict(body, chat_pb2.ChatCompletionRequest())


async def collect(
    channel: grpc.aio.Channel, req: chat_pb2.ChatCompletionRequest
) -> list[chat_pb2.ChatCompletionChunk]:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    return [chunk async for chunk in stub.StreamChatCompletion(req)]


async def test_contract_json_request_gets_a_string_answer(channel: grpc.aio.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    req = ParseDict(CONTRACT_REQUEST, chat_pb2.ChatCompletionRequest())
    completion = MessageToDict(
        await stub.CreateChatCompletion(req), preserving_proto_field_name=True
    )
    assert completion["choices"][0]["message"]["content"] == "hi"
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["model"] == "echo"
    assert completion["id"].startswith("chatcmpl-")
    assert completion["usage"] == {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}


async def test_echo_answers_the_last_user_message_unchanged(channel: grpc.aio.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    req = ParseDict(
        {
            "model": "echo",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "  second\tquestion,  spaced \n"},
            ],
        },
        chat_pb2.ChatCompletionRequest(),
    )
    completion = await stub.CreateChatCompletion(req)
    assert completion.choices[0].message.content == "  second\tquestion,  spaced \n"
    assert completion.choices[0].message.role == "assistant"
    # prompt words over all messages: 2 + 2 + 2 + 3
    assert completion.usage.prompt_tokens == 9
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == 12


async def test_stream_sends_one_chunk_per_word_keeping_whitespace(
    channel: grpc.aio.Channel,
) -> None:
    text = "one two  three\nfour"
    chunks = await collect(channel, request(text))
    assert [c.choices[0].delta.content for c in chunks] == ["one ", "two  ", "three\n", "four"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert not any(c.choices[0].delta.HasField("role") for c in chunks[1:])
    assert len({(c.id, c.created) for c in chunks}) == 1  # the words between: text items
    assert {c.model for c in chunks} == {"echo"}


async def test_a_long_stream_is_a_chunk_per_word_for_1024_words_then_the_rest(
    channel: grpc.aio.Channel,
) -> None:
    words = [f"w{i}{' ' if i % 3 else chr(10)}" for i in range(3000)]
    chunks = await collect(channel, request("".join(words)))
    assert [c.choices[0].delta.content for c in chunks] == [*words[:1024], "".join(words[1024:])]
    assert chunks[-1].usage.completion_tokens == 3000


async def test_stream_carries_usage_and_finish_reason_on_the_last_chunk_only(
    channel: grpc.aio.Channel,
) -> None:
    chunks = await collect(channel, request("a b c"))
    assert [c.HasField("usage") for c in chunks] == [False, False, True]
    assert [c.choices[0].HasField("finish_reason") for c in chunks] == [False, False, True]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage == chat_pb2.Usage(prompt_tokens=3, completion_tokens=3, total_tokens=6)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_max_tokens_truncates_with_finish_reason_length(
    channel: grpc.aio.Channel, field: str
) -> None:
    chunks = await collect(channel, request("w1 w2 w3 w4 w5", **{field: 2}))
    assert "".join(c.choices[0].delta.content for c in chunks) == "w1 w2 "
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 2
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    completion = await stub.CreateChatCompletion(request("w1 w2 w3 w4 w5", **{field: 2}))
    assert completion.choices[0].message.content == "w1 w2 "
    assert completion.choices[0].finish_reason == "length"


async def test_max_tokens_not_reached_finishes_with_stop(channel: grpc.aio.Channel) -> None:
    chunks = await collect(channel, request("w1 w2", max_tokens=2))
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_empty_answer_is_one_chunk_carrying_usage(channel: grpc.aio.Channel) -> None:
    chunks = await collect(channel, request("   "))
    assert len(chunks) == 1
    assert chunks[0].choices[0].delta.content == ""
    assert chunks[0].choices[0].finish_reason == "stop"
    assert chunks[0].usage == chat_pb2.Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)


async def test_content_parts_are_read_as_text(channel: grpc.aio.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    req = chat_pb2.ChatCompletionRequest(
        model="echo",
        messages=[
            chat_pb2.ChatMessage(
                role="user",
                parts=[
                    chat_pb2.ContentPart(type="text", text="look at"),
                    chat_pb2.ContentPart(
                        type="image_url",
                        image_url=chat_pb2.ImageUrl(url="data:image/png;base64,AA"),
                    ),
                    chat_pb2.ContentPart(type="text", text="this"),
                ],
            )
        ],
    )
    completion = await stub.CreateChatCompletion(req)
    assert completion.choices[0].message.content == "look at\nthis"
    assert completion.usage.prompt_tokens == 3


async def test_n_choices_each_get_the_answer(channel: grpc.aio.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    completion = await stub.CreateChatCompletion(request("x y", n=3))
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert {c.message.content for c in completion.choices} == {"x y"}
    assert completion.usage.completion_tokens == 6


async def test_missing_model_uses_the_tier_default(channel: grpc.aio.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    req = chat_pb2.ChatCompletionRequest(messages=[chat_pb2.ChatMessage(role="user", content="q")])
    completion = await stub.CreateChatCompletion(req)
    assert completion.model == "echo"
    assert completion.choices[0].message.content == "q"


async def test_request_id_is_echoed_in_initial_metadata(channel: grpc.aio.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    call = stub.CreateChatCompletion(request("x"), metadata=(("x-request-id", "req-1:a.b_c"),))
    assert dict(await call.initial_metadata())["x-request-id"] == "req-1:a.b_c"
    await call


@pytest.mark.parametrize("incoming", [None, "bad id with spaces", "x" * 129])
async def test_invalid_or_missing_request_id_is_replaced(
    channel: grpc.aio.Channel, incoming: str | None
) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    metadata = (("x-request-id", incoming),) if incoming else ()
    call = stub.StreamChatCompletion(request("x"), metadata=metadata)
    request_id = dict(await call.initial_metadata())["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", str(request_id))
    assert [c async for c in call]


async def test_stream_past_its_deadline_is_deadline_exceeded(channel: grpc.aio.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    req = request("one two three four five six", model="slow-echo")
    call = stub.StreamChatCompletion(req, timeout=0.35)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in call:
            received.append(chunk)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 1 <= len(received) < 6


async def test_unary_past_its_deadline_is_deadline_exceeded(channel: grpc.aio.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateChatCompletion(request("a b c d", model="slow-echo"), timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_deadline_long_enough_is_met(channel: grpc.aio.Channel) -> None:
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    completion = await stub.CreateChatCompletion(request("a b", model="slow-echo"), timeout=10)
    assert completion.choices[0].message.content == "a b"
