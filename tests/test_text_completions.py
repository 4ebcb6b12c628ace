"""`POST /v1/completions`, OpenAI's legacy text completion, through the official `openai`
SDK on a live server: a one-message chat in `text_completion` shapes, whole and
streamed. Auth, limits, errors, cancellation and the ledger are in the parity matrix
(test_door_parity.py, door `completions`)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.fake_upstream import FakeUpstream
from tests.servers import TandemProcess

CONFIG = """
providers:
  - {name: up, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0}
  - {name: local, kind: mock}
models:
  - {name: gpt, provider: up, upstream: gpt-upstream}
  - {name: echo, provider: local}
tiers:
  free: {default_model: echo}
"""


def test_a_text_completion_is_openais_text_completion(client: Any) -> None:
    completion = client.completions.create(model="echo", prompt="one two three")
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert len(completion.id) > len("cmpl-")
    assert completion.model == "echo"
    [choice] = completion.choices
    assert (choice.text, choice.index, choice.logprobs, choice.finish_reason) == (
        "one two three",
        0,
        None,
        "stop",
    )
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 3)
    assert completion.usage.total_tokens == 6


def test_a_streamed_text_completion_sends_text_deltas(client: Any) -> None:
    chunks = list(client.completions.create(model="echo", prompt="one two three", stream=True))
    assert all(c.object == "text_completion" and c.id.startswith("cmpl-") for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].text for c in chunks] == ["one ", "two ", "three"]
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, "stop"]
    assert all(c.usage is None for c in chunks)


def test_include_usage_adds_a_last_chunk_with_the_usage(client: Any) -> None:
    chunks = list(
        client.completions.create(
            model="echo",
            prompt="one two three",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks[:-1]) == "one two three"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 3)
    assert all(c.usage is None for c in chunks[:-1])


def test_max_tokens_bounds_the_answer_and_its_absence_does_not(client: Any) -> None:
    cut = client.completions.create(model="echo", prompt="a b c d", max_tokens=2)
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == ("a b ", "length")
    prompt = " ".join(f"w{i}" for i in range(40))  # past OpenAI's legacy default of 16
    whole = client.completions.create(model="echo", prompt=prompt)
    assert (whole.choices[0].text, whole.choices[0].finish_reason) == (prompt, "stop")


@pytest.mark.parametrize("stream", [False, True])
def test_an_openai_upstream_gets_the_prompt_as_a_chat_with_every_field(
    client: Any, fake: FakeUpstream, stream: bool
) -> None:
    answer = client.completions.create(
        model="gpt",
        prompt="hello there",
        max_tokens=5,
        temperature=0.5,
        stop=["END"],
        seed=7,
        user="end-user",
        stream=stream,
        extra_body={"repetition_penalty": 1.1, "guided_choice": ["a", "b"]},
    )
    chunks = list(answer) if stream else [answer]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "hello there"
    sent = fake.requests[0].body
    assert sent["messages"] == [{"role": "user", "content": "hello there"}]
    assert (sent["model"], sent["max_tokens"], sent["temperature"]) == ("gpt-upstream", 5, 0.5)
    assert (sent["stop"], sent["seed"], sent["user"]) == (["END"], 7, "end-user")
    assert (sent["repetition_penalty"], sent["guided_choice"]) == (1.1, ["a", "b"])
    assert "prompt" not in sent


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"suffix": "}"}, "suffix"),
        ({"echo": True}, "echo"),
        ({"best_of": 2}, "best_of"),
        ({"logprobs": 1}, "logprobs"),
        ({"logprobs": 0}, "logprobs"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
    ],
)
def test_what_a_chat_cannot_honour_is_a_400_naming_the_field(
    client: Any, fake: FakeUpstream, fields: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": "gpt", "prompt": "x", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**body)
    error: Any = caught.value.body
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"].startswith(f"{param}: ")
    assert fake.requests == []


def test_the_values_that_ask_for_nothing_are_served(client: Any) -> None:
    completion = client.completions.create(
        model="echo", prompt="fine", echo=False, best_of=1, suffix=None, logprobs=None
    )
    assert completion.choices[0].text == "fine"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo"}, "prompt"),
        ({"model": "echo", "prompt": 3}, "prompt"),
        ({"model": "echo", "prompt": "x", "messages": []}, "messages"),
        ({"model": "echo", "prompt": "x", "temperature": "hot"}, "temperature"),
        ([1], "body"),
    ],
)
def test_a_malformed_text_completion_is_a_400_naming_the_field(
    gateway: TandemProcess, body: Any, param: str
) -> None:
    response = httpx.post(f"{gateway.base_url}/v1/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_mock_answer_names_the_fields_it_left_out(client: Any) -> None:
    raw = client.completions.with_raw_response.create(
        model="echo", prompt="x", extra_body={"store": True, "repetition_penalty": 1.1}
    )
    assert raw.headers["x-tandem-ignored-fields"] == "store,repetition_penalty"
    assert raw.parse().choices[0].text == "x"


def test_openapi_lists_the_text_completion(gateway: TandemProcess) -> None:
    paths = httpx.get(f"{gateway.base_url}/openapi.json").json()["paths"]
    body = paths["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["prompt"]
    assert body["schema"]["properties"]["prompt"] == {"type": "string"}
