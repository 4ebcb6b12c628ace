"""The official `openai` SDK, unchanged, against `/v1` on a live server."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.servers import TandemProcess


@pytest.fixture
def client(shared_server: TandemProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{shared_server.base_url}/v1", api_key="unused") as client:
        yield client


def test_sync_chat_gets_echos_answer(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hello from the sdk"}]
    )
    assert completion.object == "chat.completion"
    assert completion.model == "echo"
    assert completion.choices[0].message.content == "hello from the sdk"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].index == 0
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 4)
    assert completion.usage.total_tokens == 8


async def test_async_chat_gets_echos_answer(shared_server: TandemProcess) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{shared_server.base_url}/v1", api_key="unused"
    ) as client:
        completion = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "async hello"}]
        )
    assert completion.choices[0].message.content == "async hello"


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    chunks = list(stream)
    assert [c.choices[0].delta.content for c in chunks] == ["one ", "two ", "three"]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, "stop"]


def test_stream_with_include_usage_ends_with_a_usage_chunk(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == "one two three"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])


async def test_async_stream_with_include_usage(shared_server: TandemProcess) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{shared_server.base_url}/v1", api_key="unused"
    ) as client:
        stream = await client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "a b"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert [c.choices[0].delta.content for c in chunks[:-1]] == ["a ", "b"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 4


def test_max_completion_tokens_truncates(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "w1 w2 w3 w4"}],
        max_completion_tokens=2,
    )
    assert completion.choices[0].message.content == "w1 w2 "
    assert completion.choices[0].finish_reason == "length"


def test_unknown_fields_are_ignored(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "still fine"}],
        extra_body={"store": False, "metadata": {"a": "b"}, "some_future_field": [1, 2]},
    )
    assert completion.choices[0].message.content == "still fine"


def test_embeddings_default_base64_and_float_agree(client: openai.OpenAI) -> None:
    base64_result = client.embeddings.create(model="echo", input=["hello", "world"])
    float_result = client.embeddings.create(
        model="echo", input=["hello", "world"], encoding_format="float"
    )
    assert base64_result.object == "list"
    assert [d.index for d in base64_result.data] == [0, 1]
    for a, b in zip(base64_result.data, float_result.data, strict=True):
        assert len(a.embedding) == 64
        assert a.embedding == pytest.approx(b.embedding, rel=1e-6)
        assert math.isclose(sum(x * x for x in a.embedding), 1.0, rel_tol=1e-5)
    assert base64_result.usage.prompt_tokens == 2


def test_embeddings_accept_a_single_string(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="echo", input="just one", encoding_format="float")
    assert len(result.data) == 1


def test_models_list_and_retrieve_with_a_slash(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["echo", "slow-echo", "org/echo-2"]
    model = client.models.retrieve("org/echo-2")
    assert (model.id, model.owned_by, model.object) == ("org/echo-2", "demo", "model")


def test_errors_reach_the_sdk_as_its_own_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.body == {
        "message": "model 'ghost' not found",
        "type": "not_found_error",
        "code": "model_not_found",
        "param": "model",
    }
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert bad.value.code is None
    assert "temperature" in bad.value.message
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="private", messages=[{"role": "user", "content": "x"}])


def test_errors_carry_the_request_id(shared_server: TandemProcess) -> None:
    response = httpx.post(
        f"{shared_server.base_url}/v1/chat/completions",
        json={"model": "ghost", "messages": [{"role": "user", "content": "x"}]},
        headers={"x-request-id": "trace-42"},
    )
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "trace-42"
