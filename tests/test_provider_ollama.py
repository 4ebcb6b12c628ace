"""The `ollama` provider: /api/chat (NDJSON) and /api/embed on a fake Ollama, through the doors
(its translation, in process: tests/unit/translate/test_ollama.py)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
import pytest

from tests.fake_upstream import OLLAMA_CALL_IDS, SECRET_URL, FakeUpstream
from tests.servers import TandemProcess, streamed_over_grpc, streamed_over_sdk

CONFIG = """
providers:
  - {name: lab, kind: ollama, base_url: "%(root)s", max_retries: 0}
models:
  - {name: llama, provider: lab, upstream: "llama3.2:1b"}
tiers:
  free: {default_model: llama}
"""


def test_chat_whole_and_streamed_with_usage(client: Any, fake: FakeUpstream) -> None:
    completion = client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "hi there llama"}]
    )
    assert completion.choices[0].message.content == "hi there llama"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 3)
    assert fake.requests[0].path == "/api/chat"
    assert fake.requests[0].body["model"] == "llama3.2:1b"
    assert fake.requests[0].body["stream"] is False

    chunks = streamed_over_sdk(client, "llama", "a b c d", max_tokens=3)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b c "
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 3


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_get_distinct_ids_and_string_arguments(
    client: Any, fake: FakeUpstream, stream: bool
) -> None:
    """An Ollama before 0.12.10 sends no ids: each call gets its own, within an answer
    and across turns, as a client matching results to calls needs."""
    args: dict[str, Any] = {"model": "llama", "messages": [{"role": "user", "content": "weather?"}]}
    turns = []
    for _ in range(2):
        fake.reset("tools")
        if stream:
            chunks = list(client.chat.completions.create(**args, stream=True))
            pieces = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
            assert [p.index for p in pieces] == [0, 1]  # each call whole, its id with it
            finish = chunks[-1].choices[0].finish_reason
        else:
            completion = client.chat.completions.create(**args)
            pieces = completion.choices[0].message.tool_calls
            finish = completion.choices[0].finish_reason
        assert [(c.function.name, c.function.arguments) for c in pieces] == [
            ("get_weather", '{"city":"Paris"}'),
            ("get_time", "{}"),
        ]
        assert finish == "tool_calls"
        turns += [c.id for c in pieces]
    assert len(set(turns)) == 4, turns
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", i) for i in turns), turns


@pytest.mark.parametrize("stream", [False, True])
def test_the_ollama_door_passes_the_ids_on(
    gateway: TandemProcess, fake: FakeUpstream, stream: bool
) -> None:
    """Through `/api/chat` too, as Ollama sends them: on each call, whole."""
    body = {"model": "llama", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    ids = []
    for _ in range(2):
        fake.reset("tools")
        answer = httpx.post(f"{gateway.base_url}/api/chat", json=body)
        calls = [
            call
            for line in answer.text.splitlines()
            for call in orjson.loads(line)["message"].get("tool_calls", ())
        ]
        assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
        ids += [c["id"] for c in calls]
    assert len(set(ids)) == 4, ids
    assert all(i.startswith("call_") for i in ids)


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstreams_own_tool_call_ids_are_kept(
    gateway: TandemProcess, client: Any, fake: FakeUpstream, stream: bool
) -> None:
    """Ollama 0.12.10 on names its calls (`id`): those ids, on both doors, whole or streamed."""
    fake.reset("toolids")
    args: dict[str, Any] = {"model": "llama", "messages": [{"role": "user", "content": "x"}]}
    if stream:
        chunks = list(client.chat.completions.create(**args, stream=True))
        ids = [tc.id for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    else:
        ids = [c.id for c in client.chat.completions.create(**args).choices[0].message.tool_calls]
    assert tuple(ids) == OLLAMA_CALL_IDS

    fake.reset("toolids")
    answer = httpx.post(f"{gateway.base_url}/api/chat", json={**args, "stream": stream})
    lines = [orjson.loads(line)["message"] for line in answer.text.splitlines()]
    assert tuple(c["id"] for m in lines for c in m.get("tool_calls", ())) == OLLAMA_CALL_IDS


def test_tool_call_ids_go_upstream_as_ollama_spells_them(
    gateway: TandemProcess, client: Any, fake: FakeUpstream
) -> None:
    """A call's `id` and a result's `tool_call_id` reach the Ollama as sent (an Ollama
    before 0.12.10 ignores them), beside the result's `tool_name`."""
    call = {"id": "call_a1", "function": {"name": "f", "arguments": {"n": 1}}}
    result = {"role": "tool", "content": "one", "tool_name": "f", "tool_call_id": "call_a1"}
    body = {
        "model": "llama",
        "messages": [{"role": "assistant", "content": "", "tool_calls": [call]}, result],
        "stream": False,
    }
    httpx.post(f"{gateway.base_url}/api/chat", json=body).raise_for_status()
    assert fake.requests[-1].body["messages"][0]["tool_calls"] == [call]
    assert fake.requests[-1].body["messages"][1] == result

    calls = [
        {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}}
        for i in ("call_a1", "call_b2")
    ]
    client.chat.completions.create(
        model="llama",
        messages=[
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "content": "two", "tool_call_id": "call_b2"},
            {"role": "tool", "content": "one", "tool_call_id": "call_a1"},
            {"role": "user", "content": "thanks"},
        ],
    )
    sent = fake.requests[-1].body["messages"]
    assert [c["id"] for c in sent[0]["tool_calls"]] == ["call_a1", "call_b2"]
    assert sent[1:3] == [
        {"role": "tool", "content": "two", "tool_call_id": "call_b2"},  # no tool named
        {"role": "tool", "content": "one", "tool_call_id": "call_a1"},
    ]


def test_embeddings_and_grpc(gateway: TandemProcess, client: Any, fake: FakeUpstream) -> None:
    result = client.embeddings.create(model="llama", input=["abc"], encoding_format="float")
    assert result.data[0].embedding == [3.0, 1.0]
    assert result.usage.prompt_tokens == 4

    chunks = streamed_over_grpc(gateway, "via grpc")
    assert "".join(c.choices[0].delta.content for c in chunks) == "via grpc"
    assert chunks[-1].usage.total_tokens == 7


def test_an_ollama_error_hides_its_details(gateway: TandemProcess, fake: FakeUpstream) -> None:
    fake.reset("500")
    response = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": "llama", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.status_code == 502
    assert SECRET_URL not in response.text
    assert fake.root.split("//")[1] not in response.text
