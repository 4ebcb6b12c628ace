"""Accounting no caller can dodge, each seen on a live gateway: what is charged is
what is recorded is what the reservation settles to."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import jwt
import orjson
import pytest

from tests.eventually import eventually
from tests.fake_upstream import FakeUpstream
from tests.servers import TandemProcess, grpc_chat_failure, start_tandem, usage_records

CONFIG = """
providers:
  - {name: demo, kind: mock}
  - {name: up, kind: openai, base_url: "%(upstream)s", api_key: k, max_retries: 0}
models:
  - {name: echo, provider: demo}
  - {name: relay, provider: up}
tiers:
  free: {default_model: echo, tokens_per_minute: 2000}
usage: {store: "sqlite:///usage.db", flush_interval_ms: 20}
"""
PROMPT = "one two three"  # max(3 words, ceil(13 bytes / 4)) = 4 tokens by the estimate
PROMPT_ESTIMATE = 4


@pytest.fixture
def gateway(fake: FakeUpstream, tmp_path: Any) -> Iterator[TandemProcess]:
    fake.reset()
    process = start_tandem(tmp_path, CONFIG % {"upstream": fake.base_url})
    yield process
    assert process.terminate() == 0, process.stderr()


def chat(model: str, text: str = PROMPT, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **fields}


def remaining_tokens(gateway: TandemProcess) -> int:
    """What the token budget says now (a listing counts a request, no tokens)."""
    return int(httpx.get(f"{gateway.base_url}/v1/models").headers["x-ratelimit-remaining-tokens"])


def records(gateway: TandemProcess, count: int) -> list[dict[str, Any]]:
    """The anonymous caller's records once `count` are written, newest first."""
    return usage_records(gateway, count)


def test_a_stream_cut_before_its_first_chunk_is_charged_its_prompt(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("slow:3")
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream(
            "POST",
            f"{gateway.base_url}/v1/chat/completions",
            json=chat("relay", stream=True),
            timeout=httpx.Timeout(5, read=1),
        ) as response,
    ):
        response.read()
    [record] = records(gateway, 1)
    assert record["status"] == "cancelled"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (PROMPT_ESTIMATE, 0)
    assert record["usage_source"] == "estimated"
    assert fake.requests, "the prompt reached the upstream"


def test_a_grpc_deadline_before_the_first_chunk_is_charged_its_prompt(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("slow:3")
    code = grpc_chat_failure(gateway, "relay", PROMPT, timeout=1)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    [record] = records(gateway, 1)
    assert record["status"] == "cancelled"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (PROMPT_ESTIMATE, 0)


def test_an_upstream_failure_that_produced_nothing_is_free(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("503")
    answer = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=chat("relay"))
    assert answer.status_code == 502
    [record] = records(gateway, 1)
    assert record["status"] == "error:upstream_error"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (0, 0)
    assert remaining_tokens(gateway) == 2000


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_without_usage_is_charged_the_estimate(
    gateway: TandemProcess, fake: FakeUpstream, stream: bool
) -> None:
    fake.reset("nousage")
    body = chat("relay", stream=stream)
    if stream:
        body["stream_options"] = {"include_usage": True}
        with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: {")]
        usage = orjson.loads(lines[-1][6:])["usage"]
    else:
        usage = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body).json()["usage"]
    # the answer "one two three", sent whole or word by word: max(3 words, ceil(13 bytes / 4))
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (4, 4)
    [record] = records(gateway, 1)
    assert record["usage_source"] == "estimated"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert record["status"] == "ok"


def test_a_long_stream_without_usage_is_charged_all_it_sent(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("nousage")
    words = 600  # one chunk each: more than the gateway keeps before it counts them
    body = chat("relay", " ".join(["a"] * words), stream=True)
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body) as answer:
        pieces = [line for line in answer.iter_lines() if line.startswith("data: {")]
    assert len(pieces) > words
    [record] = records(gateway, 1)
    # "a a a ...": a word per two bytes, so words are the estimate, prompt and answer
    assert (record["prompt_tokens"], record["completion_tokens"]) == (words, words)
    assert record["usage_source"] == "estimated"


@pytest.mark.parametrize(
    ("behaviour", "estimate"),
    [
        ("pairs", 7),  # two choices of "one two three": ceil(26 bytes / 4)
        # the names and arguments: get_weather, '{"city": "Paris"}', get_time, '{}'
        ("tools:nousage", 10),  # ceil(38 bytes / 4)
    ],
)
def test_streamed_choices_and_tool_calls_without_usage_are_estimated(
    gateway: TandemProcess, fake: FakeUpstream, behaviour: str, estimate: int
) -> None:
    fake.reset(behaviour)
    with httpx.stream(
        "POST", f"{gateway.base_url}/v1/chat/completions", json=chat("relay", stream=True)
    ) as answer:
        assert answer.status_code == 200
        answer.read()
    [record] = records(gateway, 1)
    assert (record["completion_tokens"], record["usage_source"]) == (estimate, "estimated")


def test_embeddings_without_usage_are_charged_the_estimate(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("nousage")
    answer = httpx.post(
        f"{gateway.base_url}/v1/embeddings", json={"model": "relay", "input": ["a b", "c"]}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] == 2 + 1
    [record] = records(gateway, 1)
    assert (record["prompt_tokens"], record["usage_source"]) == (3, "estimated")


def test_the_mocks_exact_counts_are_the_upstreams(gateway: TandemProcess) -> None:
    answer = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=chat("echo"))
    assert answer.json()["usage"]["prompt_tokens"] == 3  # words: the mock's own count
    [record] = records(gateway, 1)
    assert (record["prompt_tokens"], record["usage_source"]) == (3, "upstream")


def test_n_choices_are_reserved_and_a_request_that_can_never_fit_is_final(
    gateway: TandemProcess,
) -> None:
    never = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json=chat("echo", n=128, max_tokens=1000)
    )
    assert never.status_code == 429
    assert never.headers["x-should-retry"] == "false"
    assert f"needs {PROMPT_ESTIMATE + 128_000} tokens" in never.json()["error"]["message"]
    fits = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json=chat("echo", n=3, max_tokens=600)
    )
    assert fits.status_code == 200
    # reserved 4 + 3 x 600 = 1804 of 2000 while it ran
    assert int(fits.headers["x-ratelimit-remaining-tokens"]) == 2000 - PROMPT_ESTIMATE - 1800


def test_one_huge_word_is_estimated_by_its_bytes(gateway: TandemProcess) -> None:
    word = "x" * 100_000  # one word, 25,000 tokens by the estimate: more than the tier's 2,000
    answer = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=chat("echo", word))
    assert answer.status_code == 429
    assert answer.headers["x-should-retry"] == "false"


def test_the_mock_refuses_to_amplify_a_request(tandem: Any) -> None:
    gateway = tandem()  # the built-in config: anonymous, no limits
    word = "x" * 1_000_000
    answer = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json=chat("echo", word, n=128), timeout=30
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "n"
    fine = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=chat("echo", "hi", n=128))
    assert fine.status_code == 200
    assert len(fine.json()["choices"]) == 128


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_with_redis_unreachable_settlements_land_in_the_local_bucket(tandem: Any) -> None:
    config = f"""
providers: [{{name: demo, kind: mock}}]
models: [{{name: echo, provider: demo}}]
tiers:
  free: {{default_model: echo, tokens_per_minute: 2000}}
rate_limits: {{backend: redis, url: "redis://127.0.0.1:{_closed_port()}/0"}}
usage: {{store: none}}
"""
    gateway = tandem(config)
    with httpx.Client(base_url=gateway.base_url) as http:
        answers = [http.post("/v1/chat/completions", json=chat("echo", max_tokens=1500))]
        answers.append(http.post("/v1/chat/completions", json=chat("echo", max_tokens=1500)))
    # each reserved 1504 and settled to 6: the second fits what the first gave back
    assert [a.status_code for a in answers] == [200, 200]
    eventually(lambda: "Redis unreachable" in gateway.stderr())  # logs leave from a thread


SECRET = "s" * 40
ADMIN_KEY = "accounting-admin-key-0123456789"
OPEN_CONFIG = f"""
providers: [{{name: demo, kind: mock}}]
models: [{{name: echo, provider: demo}}]
tiers: {{free: {{default_model: echo}}}}
auth:
  required: false
  jwt: {{secret: "{SECRET}", algorithms: [HS256]}}
  admin_keys: ["{ADMIN_KEY}"]
usage: {{store: "sqlite:///usage.db", flush_interval_ms: 20}}
"""


def jwt_for(sub: str) -> dict[str, str]:
    claims = {"sub": sub, "exp": int(time.time()) + 600}
    return {"authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def test_a_jwt_named_admin_or_anonymous_sees_only_its_own_records(tandem: Any) -> None:
    gateway = tandem(OPEN_CONFIG)
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=gateway.base_url) as http:
        for headers in (admin, {}, jwt_for("admin"), jwt_for("anonymous")):
            assert http.post("/v1/chat/completions", json=chat("echo"), headers=headers).is_success
        usage_records(gateway, 4, ADMIN_KEY)
        for sub in ("admin", "anonymous"):
            own = http.get("/native/v1/usage", headers=jwt_for(sub)).json()["records"]
            assert len(own) == 1, own  # its own call, not the admin key's or the anonymous one's
            named = http.get("/native/v1/usage", params={"user": sub}, headers=jwt_for(sub))
            assert len(named.json()["records"]) == 1
        anonymous = http.get("/native/v1/usage").json()["records"]
        assert len(anonymous) == 1
        # an admin still finds every record under a name, whoever made it
        everyone = http.get("/native/v1/usage", params={"user": "anonymous"}, headers=admin)
        assert len(everyone.json()["records"]) == 2
