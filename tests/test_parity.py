"""One request through every door meets the same core: same text, finish and usage."""

from __future__ import annotations

from typing import Any, cast

import grpc
import httpx
import orjson
import pytest
from google.protobuf.json_format import ParseDict
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.servers import TandemProcess

CASES = [
    {"messages": [{"role": "user", "content": "the same answer everywhere"}]},
    {"messages": [{"role": "user", "content": "cut  this\tshort please"}], "max_tokens": 2},
    {
        "messages": [
            {"role": "system", "content": "sys words here"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "parts"}, {"type": "text", "text": "too"}],
            },
        ]
    },
]


def sse_chunks(text: str) -> list[Any]:
    events = [e[6:] for e in text.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


@pytest.mark.parametrize("case", CASES)
async def test_grpc_native_and_openai_agree(
    shared_server: TandemProcess, channel: grpc.aio.Channel, case: dict[str, object]
) -> None:
    body = {"model": "echo", **case}
    answers: dict[str, tuple[str, str, tuple[int, int, int]]] = {}

    stub = chat_pb2_grpc.ChatServiceStub(channel)
    request = chat_pb2.ChatCompletionRequest(model="echo")
    native_form = {**body}
    messages = []
    for m in cast(list[dict[str, Any]], body["messages"]):
        if isinstance(m["content"], list):
            m = {"role": m["role"], "parts": m["content"]}
        messages.append(m)
    native_form["messages"] = messages
    ParseDict(native_form, request)
    unary = await stub.CreateChatCompletion(request)
    u = unary.usage
    answers["grpc"] = (
        unary.choices[0].message.content,
        unary.choices[0].finish_reason,
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
    )
    chunks = [c async for c in stub.StreamChatCompletion(request)]
    u = chunks[-1].usage
    answers["grpc-stream"] = (
        "".join(c.choices[0].delta.content for c in chunks),
        chunks[-1].choices[0].finish_reason,
        (u.prompt_tokens, u.completion_tokens, u.total_tokens),
    )

    async with httpx.AsyncClient(base_url=shared_server.base_url) as client:
        for door, path in (("native", "/native/v1"), ("openai", "/v1")):
            reply = (await client.post(f"{path}/chat/completions", json=body)).json()
            usage = reply["usage"]
            answers[door] = (
                reply["choices"][0]["message"]["content"],
                reply["choices"][0]["finish_reason"],
                (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]),
            )
            stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
            streamed = sse_chunks(
                (await client.post(f"{path}/chat/completions", json=stream_body)).text
            )
            usage = streamed[-1]["usage"]
            with_choices = [c for c in streamed if c["choices"]]
            answers[f"{door}-stream"] = (
                "".join(c["choices"][0]["delta"].get("content", "") for c in with_choices),
                with_choices[-1]["choices"][0]["finish_reason"],
                (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]),
            )
    assert len(set(answers.values())) == 1, answers
