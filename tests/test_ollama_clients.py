"""What Ollama's clients ask of a server before they chat, as Ollama answers it: `GET /`
and `HEAD /` say it is running, a chat with no messages (a generate with no prompt)
loads the model (a zero `keep_alive` unloads it), `/api/show` says what a model can
do. The official `ollama` library, and raw HTTP for what it hides, on a live gateway
with a fake Ollama upstream."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import ollama
import orjson
import pytest

from tests.eventually import eventually
from tests.fake_upstream import SECRET_URL, FakeUpstream
from tests.servers import TandemProcess, usage_records

SECRET = "ollama-clients-secret-0123456789abcdef"
ADMIN_KEY = "ollama-clients-admin-key"
FAILURES = {  # a model whose upstream cannot say what it can do -> how it fails
    "fails-status": "500",
    "fails-slowly": "slow:3",
    "fails-flood": "flood:2",
    "fails-badjson": "badjson",
    "fails-old": "nocapabilities",
}
CONFIG = f"""
providers:
  - {{name: demo, kind: mock}}
  - {{name: lab, kind: ollama, base_url: "%(root)s", max_retries: 0, timeout_s: 1}}
models:
  - {{name: echo, provider: demo}}
  - {{name: hidden, provider: demo}}
  - {{name: vector, provider: demo, capabilities: [embedding]}}
  - {{name: llama, provider: lab, upstream: "llama3.2:1b"}}
  - {{name: embedder, provider: lab, upstream: nomic-embed-text}}
  - {{name: qwen, provider: lab, upstream: "qwen3:8b"}}
  - {{name: told, provider: lab, upstream: "qwen3:8b", capabilities: [completion, vision]}}
{"".join(f"  - {{name: {name}, provider: lab}}{chr(10)}" for name in FAILURES)}
tiers:
  free:
    default_model: echo
    models: [echo, vector, llama, embedder, qwen, told, {", ".join(FAILURES)}]
    requests_per_minute: 1000
    tokens_per_minute: 100000
  tight: {{default_model: echo, requests_per_minute: 1}}
auth: {{required: true, admin_keys: ["{ADMIN_KEY}"], jwt: {{secret: "{SECRET}"}}}}
usage: {{store: "sqlite:///usage.db", flush_interval_ms: 20}}
"""


def token(tier: str = "free") -> tuple[str, dict[str, str]]:
    """A fresh JWT subject (its own budget and records), and its authorization header."""
    sub = f"ollama-{uuid.uuid4().hex[:12]}"
    claims = {"sub": sub, "tier": tier, "exp": int(time.time()) + 600}
    return sub, {"authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


@pytest.fixture
def auth(fake: FakeUpstream) -> dict[str, str]:
    fake.reset()
    return token()[1]


@pytest.fixture
def client(gateway: TandemProcess, auth: dict[str, str]) -> Iterator[ollama.Client]:
    with ollama.Client(host=gateway.base_url, headers=auth) as client:
        yield client


def access_line(gateway: TandemProcess, request_id: str) -> Any:
    def logged() -> Any:
        for line in gateway.stderr().splitlines():
            if line.startswith("{") and (found := orjson.loads(line)).get("request_id") == (
                request_id
            ):
                return found
        return None

    return eventually(logged, what=f"an access line for {request_id}")


# --- GET / and HEAD / ---------------------------------------------------------------------


def test_the_root_says_ollama_is_running_without_a_credential(gateway: TandemProcess) -> None:
    got = httpx.get(f"{gateway.base_url}/")
    assert (got.status_code, got.text) == (200, "Ollama is running")
    assert got.headers["content-type"] == "text/plain; charset=utf-8"
    head = httpx.head(f"{gateway.base_url}/")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == "text/plain; charset=utf-8"
    line = access_line(gateway, got.headers["x-request-id"])  # as /api/version is reported
    assert (line["protocol"], line["route"], line["status"]) == ("ollama", "/", 200)


# --- a chat with no messages loads the model ------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_with_no_messages_loads_and_calls_no_upstream(
    client: ollama.Client, fake: FakeUpstream, stream: bool
) -> None:
    if stream:
        [chat] = list(client.chat(model="llama", stream=True))
        [generated] = list(client.generate(model="llama:latest", stream=True))
    else:
        chat = client.chat(model="llama", messages=[], stream=False)
        generated = client.generate(model="llama", prompt="", stream=False)
    assert (chat.model, chat.done, chat.done_reason) == ("llama", True, "load")
    assert (chat.message.role, chat.message.content) == ("assistant", "")
    assert (generated.model, generated.response, generated.done) == ("llama", "", True)
    assert generated.done_reason == "load"
    assert fake.requests == []


@pytest.mark.parametrize(
    ("path", "body", "shape"),
    [
        ("/api/chat", {"model": "llama"}, {"message": {"role": "assistant", "content": ""}}),
        ("/api/chat", {"model": "qwen", "messages": [], "stream": False}, {}),
        ("/api/generate", {"model": "llama", "system": "be brief"}, {"response": ""}),
        ("/api/generate", {"model": "qwen", "prompt": "", "images": ["iVBOR"]}, {}),
    ],
    ids=["chat", "chat-whole", "generate", "generate-with-images"],
)
def test_the_load_answer_is_ollamas_one_object(
    gateway: TandemProcess, auth: dict[str, str], path: str, body: dict[str, Any], shape: Any
) -> None:
    answer = httpx.post(f"{gateway.base_url}{path}", json=body, headers=auth)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"  # as Ollama: streamed or not
    loaded = answer.json()
    kind = "message" if path == "/api/chat" else "response"
    assert list(loaded) == ["model", "created_at", kind, "done", "done_reason"]
    assert loaded["model"] == body["model"]
    assert loaded["created_at"].endswith("Z")
    assert (loaded["done"], loaded["done_reason"]) == (True, "load")
    for key, value in shape.items():
        assert loaded[key] == value


def test_a_zero_keep_alive_unloads_as_ollama_answers_it(
    client: ollama.Client, gateway: TandemProcess, auth: dict[str, str], fake: FakeUpstream
) -> None:
    """`keep_alive` 0 (seconds, or a Go duration that is zero) makes a load Ollama's
    unload; any other, or none Ollama could read, is a load."""
    chat = client.chat(model="llama", keep_alive=0)
    generated = client.generate(model="llama", keep_alive=0.0)
    assert (chat.done, chat.done_reason, chat.message.content) == (True, "unload", "")
    assert (generated.done, generated.done_reason, generated.response) == (True, "unload", "")
    zero: list[Any] = ["0", "0s", "-0", "0m0.0s", "0.5ns", 1e-10]
    other: list[Any] = ["5m", "1ns", -1, 1, "-1", "0x", "", True, None]
    for keep_alive, reason in [*((k, "unload") for k in zero), *((k, "load") for k in other)]:
        for path in ("/api/chat", "/api/generate"):
            body = {"model": "llama", "keep_alive": keep_alive}
            answer = httpx.post(f"{gateway.base_url}{path}", json=body, headers=auth)
            assert answer.json()["done_reason"] == reason, (path, keep_alive)
    assert fake.requests == []


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_a_model_without_completion_cannot_load_but_unloads(
    gateway: TandemProcess, auth: dict[str, str], path: str
) -> None:
    """As Ollama: `vector` is configured `[embedding]`, so its load is a 400 naming the
    model as sent; its unload is answered all the same."""
    kind = path.rpartition("/")[2]
    for model in ("vector", "vector:latest"):
        answer = httpx.post(f"{gateway.base_url}{path}", json={"model": model}, headers=auth)
        assert answer.status_code == 400
        assert answer.json() == {"error": f'"{model}" does not support {kind}'}
    body = {"model": "vector", "keep_alive": "0s"}
    answer = httpx.post(f"{gateway.base_url}{path}", json=body, headers=auth)
    assert (answer.status_code, answer.json()["done_reason"]) == (200, "unload")
    told = httpx.post(f"{gateway.base_url}{path}", json={"model": "told"}, headers=auth)
    assert told.json()["done_reason"] == "load"  # configured with `completion`


def test_a_load_checks_access_as_a_chat_does(gateway: TandemProcess) -> None:
    _, auth = token()
    for body, status in [
        ({"model": "hidden"}, 403),
        ({"model": "nope"}, 404),
        ({"model": "echo", "messages": [], "options": {"temperature": "hot"}}, 400),
    ]:
        answer = httpx.post(f"{gateway.base_url}/api/chat", json=body, headers=auth)
        assert answer.status_code == status, answer.text
        assert list(answer.json()) == ["error"]
    assert httpx.post(f"{gateway.base_url}/api/chat", json={"model": "echo"}).status_code == 401


def test_a_load_counts_one_request_and_charges_no_token(gateway: TandemProcess) -> None:
    sub, auth = token()
    base = gateway.base_url
    first = httpx.post(f"{base}/api/chat", json={"model": "echo"}, headers=auth)
    second = httpx.post(f"{base}/api/generate", json={"model": "echo"}, headers=auth)
    for answer in (first, second):
        assert answer.json()["done_reason"] == "load"
        assert answer.headers["x-ratelimit-remaining-tokens"] == "100000"  # nothing reserved
    body = {"model": "echo", "prompt": "one record", "stream": False}
    assert httpx.post(f"{base}/api/generate", json=body, headers=auth).is_success
    assert [r["completion_tokens"] for r in asyncio.run(records(gateway, sub, 1))] == [2]

    _, tight = token("tight")  # one request a minute: a load counts one, no way round it
    assert httpx.post(f"{base}/api/chat", json={"model": "echo"}, headers=tight).is_success
    again = httpx.post(f"{base}/api/chat", json={"model": "echo"}, headers=tight)
    assert again.status_code == 429


async def records(gateway: TandemProcess, sub: str, count: int) -> list[dict[str, Any]]:
    """`sub`'s usage records once `count` are written (and a moment more), newest first."""
    await asyncio.to_thread(usage_records, gateway, count, ADMIN_KEY, user=sub)
    await asyncio.sleep(0.1)  # settle: no record beyond `count` comes a moment later
    return await asyncio.to_thread(usage_records, gateway, count, ADMIN_KEY, user=sub)


# --- /api/show's capabilities ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "capabilities", "asked"),
    [
        ("echo", ["completion"], None),  # nothing configured, not an Ollama: the default
        ("vector", ["embedding"], None),  # configured
        ("told", ["completion", "vision"], None),  # configured wins over the upstream
        ("embedder", ["embedding"], "nomic-embed-text"),  # as its Ollama says
        ("qwen", ["completion", "tools", "thinking"], "qwen3:8b"),
    ],
)
def test_show_says_what_the_model_can_do(
    client: ollama.Client,
    fake: FakeUpstream,
    model: str,
    capabilities: list[str],
    asked: str | None,
) -> None:
    shown = client.show(model)
    assert shown.capabilities == capabilities
    assert shown.details is not None
    assert shown.modified_at is not None
    assert [r.body["model"] for r in fake.requests if r.path == "/api/show"] == (
        [asked] if asked else []
    )


def test_what_an_upstream_said_is_kept(client: ollama.Client, fake: FakeUpstream) -> None:
    assert client.show("llama").capabilities == ["completion"]
    assert client.show("llama:latest").capabilities == ["completion"]
    assert [r.path for r in fake.requests] == ["/api/show"]


@pytest.mark.parametrize("model", list(FAILURES))
def test_an_upstream_that_cannot_say_means_completion_and_a_log_line(
    gateway: TandemProcess,
    auth: dict[str, str],
    fake: FakeUpstream,
    model: str,
) -> None:
    fake.reset(FAILURES[model])
    answer = httpx.post(f"{gateway.base_url}/api/show", json={"model": model}, headers=auth)
    assert answer.status_code == 200, answer.text
    assert answer.json()["capabilities"] == ["completion"]
    assert fake.root not in answer.text
    assert SECRET_URL not in answer.text
    logged = [line for line in gateway.settled_stderr().splitlines() if f"'{model}'" in line]
    assert len(logged) == 1, logged
    assert "/api/show" in logged[0]
    assert "['completion']" in logged[0]
    assert fake.root.partition("//")[2] not in logged[0]
    assert "10.9.8.7" not in logged[0]
