"""The access log (one line per door request, on stderr: its fields, and no secret or
message text), `server-timing` on HTTP answers, and the request id at the upstream."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import orjson
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.eventually import eventually
from tests.fake_upstream import UPSTREAM_KEY, FakeUpstream
from tests.servers import TandemProcess, start_tandem

JWT_SECRET = "access-log-secret-0123456789abcdef"
CONFIG = """
providers:
  - {name: demo, kind: mock}
  - {name: slow, kind: mock, chunk_delay_ms: 200}
  - {name: up, kind: openai, base_url: "%(upstream)s", api_key: "%(key)s", max_retries: 0}
models:
  - {name: echo, provider: demo}
  - {name: slow-echo, provider: slow}
  - {name: relay, provider: up, upstream: relay-upstream}
tiers:
  free: {default_model: echo}
auth: {required: true, jwt: {secret: "%(secret)s", require_exp: false}}
usage: {store: none}
telemetry: {log_format: %(format)s, access_log: %(access)s}
"""
FIELDS = {
    "ts",
    "level",
    "event",
    "request_id",
    "protocol",
    "route",
    "model",
    "provider",
    "user",
    "status",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
}
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
PROMPT = "confidential-prompt-words"
TOKEN = jwt.encode({"sub": "alice"}, JWT_SECRET)
AUTH = {"authorization": f"Bearer {TOKEN}"}


def config(upstream: str, *, log_format: str = "json", access: bool = True) -> str:
    return CONFIG % {
        "upstream": upstream,
        "key": UPSTREAM_KEY,
        "secret": JWT_SECRET,
        "format": log_format,
        "access": str(access).lower(),
    }


@pytest.fixture(scope="module")
def gateway(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    process = start_tandem(tmp_path_factory.mktemp("access"), config(fake.base_url))
    yield process
    assert process.terminate() == 0, process.stderr()


def lines_of(stderr: str, request_id: str) -> list[Any]:
    lines = [orjson.loads(line) for line in stderr.splitlines()]
    return [line for line in lines if line.get("request_id") == request_id]


def request_lines(server: TandemProcess, request_id: str) -> list[Any]:
    """The access lines of one request, once the log thread has written them."""
    return eventually(
        lambda: lines_of(server.stderr(), request_id), what=f"the access lines of {request_id}"
    )


def one_line(server: TandemProcess, request_id: str) -> Any:
    lines = request_lines(server, request_id)
    assert len(lines) == 1, lines
    line = lines[0]
    assert set(line) == FIELDS
    assert TS.fullmatch(line["ts"])
    assert line["event"] == "request"
    return line


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_http_lines_have_every_field_and_nothing_secret(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    url = f"{gateway.base_url}/v1/chat/completions?trace=1"
    answer = httpx.post(url, json={"model": "echo", "messages": user(PROMPT)}, headers=AUTH)
    assert answer.status_code == 200
    line = one_line(gateway, answer.headers["x-request-id"])
    assert line | {"ts": "", "latency_ms": 0} == {
        "ts": "",
        "level": "info",
        "event": "request",
        "request_id": answer.headers["x-request-id"],
        "protocol": "openai",
        "route": "/v1/chat/completions",
        "model": "echo",
        "provider": "demo",
        "user": "alice",
        "status": 200,
        "latency_ms": 0,
        "ttft_ms": None,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cost_usd": 0,  # a mock model without a price
    }
    assert line["latency_ms"] > 0

    body = {"model": "relay", "messages": user(f"{PROMPT} again"), "stream": True}
    with httpx.stream(
        "POST", f"{gateway.base_url}/native/v1/chat/completions", json=body, headers=AUTH
    ) as stream:
        stream.read()
        streamed = one_line(gateway, stream.headers["x-request-id"])
    assert streamed["protocol"] == "native"
    assert streamed["provider"] == "up"
    assert streamed["model"] == "relay"
    assert 0 < streamed["ttft_ms"] <= streamed["latency_ms"]
    assert streamed["prompt_tokens"] > 0  # as the upstream counted them
    assert streamed["completion_tokens"] == 2

    refused = httpx.post(url, json={"model": "echo", "messages": user(PROMPT)})
    assert refused.status_code == 401
    line = one_line(gateway, refused.headers["x-request-id"])
    assert (line["status"], line["user"], line["model"]) == (401, "", "")

    ollama = httpx.post(
        f"{gateway.base_url}/api/chat",
        json={"model": "echo", "messages": user(PROMPT), "stream": False},
        headers=AUTH,
    )
    assert one_line(gateway, ollama.headers["x-request-id"])["protocol"] == "ollama"

    for probe in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        answered = httpx.get(f"{gateway.base_url}{probe}")
        assert lines_of(gateway.settled_stderr(), answered.headers["x-request-id"]) == []

    log = gateway.stderr()
    for secret in (PROMPT, TOKEN, JWT_SECRET, UPSTREAM_KEY, "Bearer"):
        assert secret not in log
    assert all(orjson.loads(line) for line in log.splitlines())  # every line is JSON


def test_a_stream_cut_after_its_start_logs_the_errors_status(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("drop")
    body = {"model": "relay", "messages": user("a b c d e"), "stream": True}
    with httpx.stream(
        "POST", f"{gateway.base_url}/v1/chat/completions", json=body, headers=AUTH
    ) as stream:
        assert stream.status_code == 200
        stream.read()
    line = one_line(gateway, stream.headers["x-request-id"])
    assert (line["status"], line["level"]) == (502, "error")


def test_a_client_gone_mid_stream_is_a_499_and_nothing_stays_in_flight(
    gateway: TandemProcess,
) -> None:
    body = {"model": "slow-echo", "messages": user("a b c d e f g h"), "stream": True}
    with httpx.stream(
        "POST", f"{gateway.base_url}/v1/chat/completions", json=body, headers=AUTH
    ) as stream:
        assert stream.status_code == 200
        next(stream.iter_raw())  # the first chunk, then the client hangs up
    line = one_line(gateway, stream.headers["x-request-id"])
    assert (line["status"], line["model"]) == (499, "slow-echo")
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    assert "tandem_inflight_requests 0.0" in metrics.splitlines()


def test_grpc_lines_name_the_method_and_the_code(gateway: TandemProcess) -> None:
    with grpc.insecure_channel(gateway.grpc) as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        request = chat_pb2.ChatCompletionRequest(
            model="echo", messages=[chat_pb2.ChatMessage(role="user", content=PROMPT)]
        )
        metadata = (("authorization", f"Bearer {TOKEN}"), ("x-request-id", "grpc-call-1"))
        chunks = list(chat.StreamChatCompletion(request, metadata=metadata))
        assert chunks
        with pytest.raises(grpc.RpcError) as refused:
            chat.CreateChatCompletion(
                chat_pb2.ChatCompletionRequest(model="nope", messages=request.messages),
                metadata=(("authorization", f"Bearer {TOKEN}"), ("x-request-id", "grpc-call-2")),
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    line = one_line(gateway, "grpc-call-1")
    assert line["route"] == "/tandem.v1.ChatService/StreamChatCompletion"
    assert (line["protocol"], line["status"], line["model"], line["user"]) == (
        "grpc",
        "OK",
        "echo",
        "alice",
    )
    assert line["ttft_ms"] is not None
    line = one_line(gateway, "grpc-call-2")
    assert (line["route"], line["status"], line["model"]) == (
        "/tandem.v1.ChatService/CreateChatCompletion",
        "NOT_FOUND",
        "",
    )
    assert PROMPT not in gateway.stderr()


def sent_id(fake: FakeUpstream) -> str | None:
    """The `x-request-id` of the last request the upstream got (any spelling)."""
    headers = {name.lower(): value for name, value in fake.requests[-1].headers.items()}
    return headers.get("x-request-id")


def timing(response: httpx.Response) -> dict[str, float]:
    parts = (part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    return {name: float(ms) for name, ms in parts}


def test_server_timing_and_the_request_id_reach_the_caller_and_the_upstream(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("slow:0.2")
    answer = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": "relay", "messages": user("hello")},
        headers={**AUTH, "x-request-id": "caller-id-42"},
    )
    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "caller-id-42"
    spent = timing(answer)
    assert set(spent) == {"gateway", "upstream"}
    assert 200 <= spent["upstream"] <= spent["gateway"]
    assert sent_id(fake) == "caller-id-42"

    fake.reset("500")
    failed = httpx.post(
        f"{gateway.base_url}/v1/chat/completions",
        json={"model": "relay", "messages": user("hello")},
        headers=AUTH,
    )
    assert failed.status_code == 502
    assert set(timing(failed)) == {"gateway", "upstream"}  # errors carry it too
    assert sent_id(fake) == failed.headers["x-request-id"]

    for path, method in (("/v1/models", "GET"), ("/v1/nowhere", "GET"), ("/healthz", "GET")):
        answered = httpx.request(method, f"{gateway.base_url}{path}", headers=AUTH)
        assert set(timing(answered)) == {"gateway"}  # no provider was called


def test_text_format_and_no_access_log(tmp_path: Path, fake: FakeUpstream) -> None:
    server = start_tandem(
        tmp_path,
        config(fake.base_url),
        args=["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--log-format", "text"],
    )
    try:
        answer = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={"model": "echo", "messages": user(PROMPT)},
            headers=AUTH,
        )
        request_id = answer.headers["x-request-id"]
        eventually(lambda: request_id in server.stderr())
    finally:
        assert server.terminate() == 0
    (line,) = [line for line in server.stderr().splitlines() if request_id in line]
    assert TS.match(line)
    assert " info request " in line
    for pair in (
        f"request_id={request_id}",
        "protocol=openai",
        "route=/v1/chat/completions",
        "model=echo",
        "user=alice",
        "status=200",
        "ttft_ms=-",
        "prompt_tokens=1",
        "cost_usd=0",
    ):
        assert pair in line.split(), pair
    assert not any(line.startswith("{") for line in server.stderr().splitlines())
    assert PROMPT not in server.stderr()

    quiet = start_tandem(tmp_path, config(fake.base_url, access=False))
    try:
        answer = httpx.post(
            f"{quiet.base_url}/v1/chat/completions",
            json={"model": "echo", "messages": user("a")},
            headers=AUTH,
        )
        assert answer.status_code == 200
    finally:
        assert quiet.terminate() == 0
    assert answer.headers["x-request-id"] not in quiet.stderr()
    assert all("event" not in orjson.loads(line) for line in quiet.stderr().splitlines())
