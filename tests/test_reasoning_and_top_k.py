"""`top_k`, `reasoning_effort` and reasoning content through every provider kind and door.

Each kind maps the fields or refuses them by name: what it sends is read off
the fake upstream's recorded body; what comes back is read through the /v1
door (raw SSE and JSON, as DeepSeek spells `reasoning_content`) and gRPC.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic as anthropic_sdk
import grpc
import httpx
import orjson
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.fake_upstream import REASONING, SIGNATURE, THOUGHTS, FakeUpstream
from tests.rpc_status import details_of
from tests.servers import TandemProcess

CONFIG = """
providers:
  - {name: up, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0}
  - {name: lab, kind: ollama, base_url: "%(root)s", max_retries: 0}
  - {name: claude, kind: anthropic, base_url: "%(root)s", api_key: "%(key)s", max_retries: 0}
  - {name: local, kind: mock}
models:
  - {name: gpt, provider: up, upstream: gpt-upstream}
  - {name: llama, provider: lab, upstream: "qwen3:1b"}
  - {name: haiku, provider: claude, upstream: claude-haiku-4-5, max_tokens_default: 50}
  - {name: echo, provider: local}
tiers:
  free: {default_model: echo, models: [gpt, llama, haiku, echo]}
"""


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def chat(gateway: TandemProcess, **body: Any) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=10)


def events(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    frames = [f.removeprefix("data: ") for f in response.text.split("\n\n") if f.strip()]
    assert frames[-1] == "[DONE]"
    return [orjson.loads(f) for f in frames[:-1]]


def deltas(response: httpx.Response) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in events(response) if e["choices"]]


def joined(pieces: list[dict[str, Any]], key: str) -> str:
    return "".join(d.get(key) or "" for d in pieces)


async def grpc_call(gateway: TandemProcess, model: str, *, stream: bool, **fields: Any) -> Any:
    request = chat_pb2.ChatCompletionRequest(
        model=model, messages=[chat_pb2.ChatMessage(role="user", content="hi there")], **fields
    )
    async with grpc.aio.insecure_channel(gateway.grpc) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        if stream:
            return [c async for c in stub.StreamChatCompletion(request)]
        return await stub.CreateChatCompletion(request)


# --- validation, every kind ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": -3}, "top_k"),
        ({"reasoning_effort": "max"}, "reasoning_effort"),
    ],
)
def test_out_of_range_top_k_and_unknown_reasoning_effort_are_400s_naming_them(
    gateway: TandemProcess, fake: FakeUpstream, fields: dict[str, Any], param: str
) -> None:
    fake.reset()
    for model in ("echo", "llama", "haiku"):
        response = chat(gateway, model=model, messages=user("x"), **fields)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        asyncio.run(grpc_call(gateway, "echo", stream=False, **fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = details_of(caught.value).bad_request
    assert bad_request is not None
    assert [v.field for v in bad_request.field_violations] == [param]
    assert fake.requests == []


def test_the_mock_ignores_top_k_and_reasoning_effort(gateway: TandemProcess) -> None:
    response = chat(
        gateway, model="echo", messages=user("same echo"), top_k=5, reasoning_effort="high"
    )
    assert response.status_code == 200
    message = response.json()["choices"][0]["message"]
    assert message["content"] == "same echo"
    assert "reasoning_content" not in message


# --- openai kind ----------------------------------------------------------------------


def test_top_k_to_an_openai_kind_model_is_a_400_and_nothing_is_sent(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    response = chat(gateway, model="gpt", messages=user("x"), top_k=40)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "top_k"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        asyncio.run(grpc_call(gateway, "gpt", stream=True, top_k=40))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fake.requests == []


SENT_BACK = [  # an earlier answer's reasoning, sent back with the conversation
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": "answer", "reasoning_content": "old thoughts"},
    {"role": "user", "content": "again"},
]


def reasoning_back(gateway: TandemProcess, model: str) -> list[dict[str, Any]]:
    """The fake's reasoning answer through /v1, whole then streamed: its reasoning apart
    from its content both ways; the streamed deltas."""
    whole = chat(gateway, model=model, messages=user("the answer")).json()["choices"][0]
    assert (whole["message"]["reasoning_content"], whole["message"]["content"]) == (
        REASONING,
        "the answer",
    )
    streamed = deltas(chat(gateway, model=model, messages=user("the answer"), stream=True))
    assert joined(streamed, "reasoning_content") == REASONING
    assert all("content" not in d for d in streamed if "reasoning_content" in d)
    assert joined(streamed, "content") == "the answer"
    return streamed


def test_openai_kind_passes_reasoning_effort_and_keeps_reasoning_content_home(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    answer = chat(gateway, model="gpt", messages=SENT_BACK, reasoning_effort="low")
    assert answer.status_code == 200
    sent = fake.requests[0].body
    assert sent["reasoning_effort"] == "low"
    assert "top_k" not in sent
    assert sent["messages"][1] == {"role": "assistant", "content": "answer"}


def test_openai_kind_reasoning_content_comes_back_whole_and_streamed(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("reasoning", "reasoning", "reasoning")
    streamed = reasoning_back(gateway, "gpt")
    assert [d["reasoning_content"] for d in streamed if "reasoning_content" in d] == list(THOUGHTS)

    chunks = asyncio.run(grpc_call(gateway, "gpt", stream=True))
    assert "".join(c.choices[0].delta.reasoning_content for c in chunks if c.choices) == REASONING


def test_plain_answers_carry_no_reasoning_field(gateway: TandemProcess, fake: FakeUpstream) -> None:
    fake.reset()
    assert (
        "reasoning_content"
        not in chat(gateway, model="gpt", messages=user("x")).json()["choices"][0]["message"]
    )
    streamed = deltas(chat(gateway, model="gpt", messages=user("a b"), stream=True))
    assert all("reasoning_content" not in d for d in streamed)


# --- ollama kind ----------------------------------------------------------------------


def test_ollama_kind_sends_top_k_as_an_option_and_reasoning_effort_as_think(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    for effort, think in (("high", "high"), ("minimal", "low")):
        response = chat(
            gateway, model="llama", messages=SENT_BACK, top_k=40, reasoning_effort=effort
        )
        assert response.status_code == 200
        sent = fake.requests[-1].body
        assert sent["options"]["top_k"] == 40
        assert sent["think"] == think
        assert sent["messages"][1] == {
            "role": "assistant",
            "content": "answer",
            "thinking": "old thoughts",
        }
    chat(gateway, model="llama", messages=user("plain"))
    assert "think" not in fake.requests[-1].body


def test_ollama_thinking_comes_back_as_reasoning_content(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("reasoning", "reasoning", "reasoning")
    reasoning_back(gateway, "llama")

    completion = asyncio.run(grpc_call(gateway, "llama", stream=False))
    assert completion.choices[0].message.reasoning_content == REASONING


# --- anthropic kind -------------------------------------------------------------------


def test_anthropic_kind_sends_top_k_and_a_thinking_budget_above_max_tokens(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    assert chat(gateway, model="haiku", messages=user("x"), top_k=7).status_code == 200
    sent = fake.requests[-1].body
    assert sent["top_k"] == 7
    assert "thinking" not in sent

    assert chat(gateway, model="haiku", messages=user("x"), reasoning_effort="medium").is_success
    sent = fake.requests[-1].body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert sent["max_tokens"] == 4096 + 50  # the model's default, raised by the budget

    body = {"messages": user("x"), "reasoning_effort": "high", "max_tokens": 3000}
    assert chat(gateway, model="haiku", **body).is_success
    sent = fake.requests[-1].body
    assert (sent["max_tokens"], sent["thinking"]["budget_tokens"]) == (3000, 2999)


def test_anthropic_refuses_what_thinking_cannot_honour_before_calling(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    for extra, param in (
        ({"max_tokens": 1024}, "max_tokens"),
        ({"max_completion_tokens": 100}, "max_completion_tokens"),
        ({"temperature": 0.5}, "temperature"),
        ({"top_k": 5}, "top_k"),
        ({"top_p": 0.5}, "top_p"),
    ):
        response = chat(gateway, model="haiku", messages=user("x"), reasoning_effort="low", **extra)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == param
    assert fake.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_thinking_comes_back_with_its_signature(
    gateway: TandemProcess, fake: FakeUpstream, stream: bool
) -> None:
    fake.reset("reasoning", "reasoning")
    response = chat(gateway, model="haiku", messages=user("the answer"), stream=stream)
    if stream:
        streamed = deltas(response)
        assert joined(streamed, "reasoning_content") == REASONING
        assert [d["reasoning_signature"] for d in streamed if "reasoning_signature" in d] == [
            SIGNATURE
        ]
        assert joined(streamed, "content") == "the answer"
    else:
        message = response.json()["choices"][0]["message"]
        assert (message["reasoning_content"], message["reasoning_signature"]) == (
            REASONING,
            SIGNATURE,
        )
        assert message["content"] == "the answer"
    # unary: the upstream's whole answer as one chunk, folded
    completion = asyncio.run(grpc_call(gateway, "haiku", stream=False))
    assert completion.choices[0].message.reasoning_content == REASONING
    assert completion.choices[0].message.reasoning_signature == SIGNATURE


def test_signed_reasoning_goes_back_up_as_a_thinking_block_first(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    messages = [
        {"role": "user", "content": "first"},
        {
            "role": "assistant",
            "content": "answer",
            "reasoning_content": "thoughts",
            "reasoning_signature": "sig",
        },
        {"role": "assistant", "content": "unsigned", "reasoning_content": "dropped"},
        {"role": "user", "content": "again"},
    ]
    assert chat(gateway, model="haiku", messages=messages).status_code == 200
    assert fake.requests[0].body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "thoughts", "signature": "sig"},
            {"type": "text", "text": "answer"},
            {"type": "text", "text": "unsigned"},
        ],
    }


# --- a caller's thinking budget --------------------------------------------------------


@pytest.mark.parametrize(("budget", "effort"), [(1025, "low"), (5000, "medium"), (20000, "high")])
def test_an_anthropic_thinking_budget_reaches_anthropic_unchanged_and_is_never_exceeded(
    gateway: TandemProcess, fake: FakeUpstream, budget: int, effort: str
) -> None:
    """/v1/messages' `thinking.budget_tokens` travels as the proto's
    `reasoning_budget_tokens`: as it is to an Anthropic upstream, as the highest level
    within it to the others (1025 was sent to Anthropic as 4096, 5000 as 16384)."""
    fake.reset()
    thinking = {"type": "enabled", "budget_tokens": budget}
    sdk: Any = anthropic_sdk.Anthropic(base_url=gateway.base_url, api_key="k", max_retries=0)
    with sdk:  # typed loosely: the SDK's overloads fight the dict literals
        for model in ("haiku", "gpt", "llama"):
            sdk.messages.create(
                model=model, max_tokens=21000, thinking=thinking, messages=user("think")
            )
        with sdk.messages.stream(
            model="haiku", max_tokens=21000, thinking=thinking, messages=user("think")
        ) as stream:
            stream.get_final_message()
    claude, gpt, llama, streamed = (r.body for r in fake.requests)
    assert claude["thinking"] == streamed["thinking"] == thinking
    assert claude["max_tokens"] == streamed["max_tokens"] == 21000
    assert gpt["reasoning_effort"] == effort
    assert llama["think"] == effort


def test_a_budget_below_anthropics_minimum_is_a_400_naming_it(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    thinking = {"type": "enabled", "budget_tokens": 1023}
    sdk: Any = anthropic_sdk.Anthropic(base_url=gateway.base_url, api_key="k", max_retries=0)
    with sdk, pytest.raises(anthropic_sdk.BadRequestError) as caught:
        sdk.messages.create(model="gpt", max_tokens=3000, thinking=thinking, messages=user("x"))
    assert "thinking.budget_tokens" in caught.value.message
    assert "reasoning_budget_tokens" not in caught.value.message
    assert fake.requests == []


def test_grpc_and_native_callers_set_a_budget_too(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    asyncio.run(grpc_call(gateway, "haiku", stream=True, reasoning_budget_tokens=2048))
    sent = fake.requests[-1].body
    # no max_tokens asked: the model's default (50) is raised by the budget, as for an effort
    assert (sent["thinking"]["budget_tokens"], sent["max_tokens"]) == (2048, 2048 + 50)
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # not raised to Anthropic's minimum
        asyncio.run(grpc_call(gateway, "haiku", stream=False, reasoning_budget_tokens=900))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reasoning_budget_tokens" in (caught.value.details() or "")
    assert len(fake.requests) == 1
    body = {"model": "gpt", "messages": user("x"), "reasoning_budget_tokens": 4096}
    response = httpx.post(f"{gateway.base_url}/native/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert fake.requests[-1].body["reasoning_effort"] == "medium"
    body = {**body, "reasoning_effort": "low"}  # both: the lower
    assert httpx.post(f"{gateway.base_url}/native/v1/chat/completions", json=body).is_success
    assert fake.requests[-1].body["reasoning_effort"] == "low"
    response = httpx.post(
        f"{gateway.base_url}/native/v1/chat/completions",
        json={**body, "reasoning_budget_tokens": 0},
    )
    assert (response.status_code, response.json()["error"]["param"]) == (
        400,
        "reasoning_budget_tokens",
    )
