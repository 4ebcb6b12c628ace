"""`tandem.client` against a live gateway. First from a fresh venv holding only
`clients/python` (installed by path, as a user would), which proves the package stands
alone; the scenarios it runs are tests/client_scenarios.py. Then, from this venv, what
is quicker to watch in-process: tool-call and reasoning events, a stream closed early,
a retry across a connection that comes back, TLS from a CA file."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import shutil
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tandem.client import (
    AsyncTandem,
    BadRequestError,
    BudgetExceededError,
    Connection,
    Finished,
    RateLimitError,
    ReasoningDelta,
    Tandem,
    TandemError,
    TextDelta,
    ToolCallDelta,
    UnavailableError,
    UpstreamError,
    UsageEvent,
)
from tandem.client._requests import chat_request
from tandem.client._retry import Deadline, retry_delay
from tandem.v1 import models_pb2, models_pb2_grpc

from tests.eventually import eventually
from tests.fake_upstream import FakeUpstream
from tests.keys_in_store import key_with, write_keys
from tests.servers import TandemProcess, start_tandem
from tests.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = Path(__file__).with_name("client_scenarios.py")
ADMIN_KEY = "python-client-admin-key-0123456789"
CONFIG = """
providers:
  - {name: demo, kind: mock}
  - {name: slow, kind: mock, chunk_delay_ms: 200}
  - {name: up, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0}
models:
  - {name: echo, provider: demo}
  - {name: slow-echo, provider: slow}
  - {name: private, provider: demo}
  - {name: priced, provider: demo, price: {input_per_mtok: 1000, output_per_mtok: 1000}}
  - {name: relay, provider: up, upstream: relay-upstream}
tiers:
  free: {default_model: echo, models: [echo, slow-echo, priced, relay]}
auth: {required: true, key_cache_s: 0.3, admin_keys: ["%(admin)s"]}
usage: {store: "sqlite:///client.db", flush_interval_ms: 50}
"""
USER, USER_RECORD = key_with("client-user")
RATE, RATE_RECORD = key_with("client-rate", tokens_per_minute=600)
SLOW, SLOW_RECORD = key_with("client-slow")
CLOSER, CLOSER_RECORD = key_with("client-closer")
NARROW, NARROW_RECORD = key_with("client-narrow", tokens_per_minute=10)
# $1,000 a million tokens: one prompt token is 1,000,000 nanos, over this budget
BUDGET, BUDGET_RECORD = key_with("client-budget", budget_nanos=1000, budget_period="daily")


@pytest.fixture(scope="module")
def gateway(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    directory = tmp_path_factory.mktemp("python-client")
    records = (USER_RECORD, RATE_RECORD, SLOW_RECORD, CLOSER_RECORD, NARROW_RECORD, BUDGET_RECORD)
    write_keys(f"sqlite:///{directory / 'client.db'}", *records)
    config = fake.filled(CONFIG.replace("%(admin)s", ADMIN_KEY))
    process = start_tandem(directory, config)
    yield process
    assert process.terminate() == 0, process.stderr()


@pytest.fixture(scope="session")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv into which only `clients/python` is installed, by path
    (pip reads the machine's own index and wheels, offline): from a copy of the
    directory alone, so that it needs nothing beside it and pip's build leaves nothing
    in the checkout."""
    directory = tmp_path_factory.mktemp("client-venv")
    source = shutil.copytree(
        ROOT / "clients" / "python",
        directory / "source",
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    venv.create(directory / "venv", with_pip=False)
    python = directory / "venv" / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return python


def scenario(python: Path, name: str, *args: str) -> dict[str, Any]:
    """Run one of tests/client_scenarios.py in `python`, isolated (-I: neither this
    checkout nor the environment's PYTHONPATH on its path), and read what it saw."""
    done = subprocess.run(
        [str(python), "-I", str(SCENARIOS), name, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return found


# --- from a fresh venv -----------------------------------------------------------------


def test_the_package_stands_alone(client_python: Path) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(client_python), "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "tandem-client" in names
    assert names <= {
        "tandem-client",
        "grpcio",
        "protobuf",
        "grpcio-status",
        "googleapis-common-protos",
        "typing-extensions",
        "typing_extensions",
    }, names
    probe = "import importlib.util as u; print([m for m in ('server', 'httpx', 'http_bridge') if u.find_spec(m)])"
    done = subprocess.run(
        [str(client_python), "-I", "-c", probe], capture_output=True, text=True, check=True, cwd="/"
    )
    assert done.stdout.strip() == "[]"


def test_answers_models_and_embeddings(client_python: Path, gateway: TandemProcess) -> None:
    found = scenario(client_python, "answers", gateway.grpc, USER)
    assert found == {
        "content": "hello there",
        "finish_reason": "stop",
        "model": "echo",
        "usage": [2, 2],
        "models": ["echo", "slow-echo", "priced", "relay"],
        "embeddings": [64, 64],
    }


def test_stream_yields_typed_events_then_the_usage(
    client_python: Path, gateway: TandemProcess
) -> None:
    found = scenario(client_python, "stream", gateway.grpc, USER)
    assert found["events"] == [
        {"event": "TextDelta", "text": "one ", "index": 0},
        {"event": "TextDelta", "text": "two ", "index": 0},
        {"event": "TextDelta", "text": "three", "index": 0},
        {"event": "Finished", "index": 0, "finish_reason": "stop"},
        {"event": "UsageEvent", "prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
    ]
    assert found["request_id"]
    assert found["usage"] is True


def test_async_client(client_python: Path, gateway: TandemProcess) -> None:
    found = scenario(client_python, "async_client", gateway.grpc, USER)
    assert found["content"] == "async hello"
    assert [e["event"] for e in found["events"]] == [
        "TextDelta",
        "TextDelta",
        "Finished",
        "UsageEvent",
    ]
    assert "".join(e.get("text", "") for e in found["events"]) == "async stream"
    assert found["request_id"]
    assert found["error"]["class"] == "NotFoundError"
    assert found["error"]["request_id"]
    assert found["models"] == ["echo", "slow-echo", "priced", "relay"]


def test_each_error_is_typed(
    client_python: Path, gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset("500", "500", "500", "500")
    found = scenario(client_python, "errors", gateway.grpc, USER, BUDGET)
    expected = {
        "401": ("AuthenticationError", "UNAUTHENTICATED", "authentication_error"),
        "403": ("PermissionDeniedError", "PERMISSION_DENIED", "permission_error"),
        "admin": ("PermissionDeniedError", "PERMISSION_DENIED", "permission_error"),
        "404": ("NotFoundError", "NOT_FOUND", "not_found_error"),
        "400": ("BadRequestError", "INVALID_ARGUMENT", "invalid_request_error"),
        "502": ("UpstreamError", "UNAVAILABLE", "upstream_error"),
        "502 stream": ("UpstreamError", "UNAVAILABLE", "upstream_error"),
        "budget": ("BudgetExceededError", "RESOURCE_EXHAUSTED", "rate_limit_error"),
    }
    for case, (cls, code, kind) in expected.items():
        error = found[case]
        assert (error["class"], error["code"], error["type"]) == (cls, code, kind), case
        assert "TandemError" in error["mro"]
        assert error["request_id"], case  # from the x-request-id initial metadata
        assert error["str"] == f"{code}: {error['message']}"
    assert found["400"]["param"] == "temperature"
    budget = found["budget"]
    assert budget["error_code"] == "budget_exceeded"
    assert "RateLimitError" in budget["mro"]
    assert budget["retry_after"] > 60  # until the day ends: never retried
    assert budget["elapsed"] < 1
    # the gateway retried its upstream already: one upstream call each, none again
    assert len(fake.requests) == 2


def test_rate_limits_retry_after_their_retry_info(
    client_python: Path, gateway: TandemProcess
) -> None:
    found = scenario(client_python, "rate_limits", gateway.grpc, RATE)
    never = found["never"]  # 700 tokens never fit 600 a minute: x-should-retry false
    assert (never["class"], never["code"], never["should_retry"]) == (
        "RateLimitError",
        "RESOURCE_EXHAUSTED",
        False,
    )
    assert never["retry_after"] is not None  # a RetryInfo: only x-should-retry says no
    assert never["elapsed"] < 0.4  # asked once
    refused = found["refused"]
    assert refused["class"] == "RateLimitError"
    assert refused["should_retry"] is True
    assert 0.5 < refused["retry_after"] <= 2.1
    # the same call, with retries: it waited as told, then got its answer
    assert found["retried_after"] >= refused["retry_after"] * 0.8
    assert found["retried_after"] < 5
    assert found["answer_words"] == 20


def test_a_call_times_out_by_its_own_deadline(client_python: Path, gateway: TandemProcess) -> None:
    found = scenario(client_python, "timeouts", gateway.grpc, SLOW)
    for case in ("stream", "whole", "default"):
        error = found[case]
        assert (error["class"], error["code"]) == ("TimeoutError", "DEADLINE_EXCEEDED"), case
        assert "TimeoutError" in error["mro"]
        assert error["elapsed"] < 1.5
    assert 1 <= len(found["words"]) < 8  # some words arrived; the deadline cut the rest
    assert found["quick"] == "quick"


def test_a_stream_is_not_retried_once_it_yielded(
    client_python: Path, gateway: TandemProcess
) -> None:
    host, _, port = gateway.grpc.rpartition(":")
    with TcpProxy(host, int(port)) as proxy:
        process = subprocess.Popen(
            [
                str(client_python),
                "-I",
                str(SCENARIOS),
                "stream_cut",
                f"127.0.0.1:{proxy.port}",
                SLOW,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
        )
        assert process.stdout is not None
        try:
            assert process.stdout.readline() == "first\n"
            proxy.cut()
            time.sleep(0.2)
            proxy.restore()  # a retry now would be answered
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 0, err
    found = json.loads(out.splitlines()[-1])
    assert found["error"]["class"] == "UnavailableError"
    assert found["error"]["code"] == "UNAVAILABLE"
    assert 1 <= len(found["words"]) < 10


def test_admin_calls(client_python: Path, gateway: TandemProcess) -> None:
    found = scenario(client_python, "admin", gateway.grpc, ADMIN_KEY)
    assert found == {
        "secret": True,
        "user": "venv-user",
        "models": ["echo"],
        "budget": ["2.5", "daily"],
        "labels": {"team": "client"},
        "listed": True,
        "updated": [1000, False],
        "revoked": True,
        "answer": "from a new key",
        "spend_groups": ["echo"],
        "usage_records": 1,
        "budget_class": "BudgetExceededError",
    }


# --- in-process -----------------------------------------------------------------------


def test_a_call_that_could_never_fit_says_so_in_its_trailers(gateway: TandemProcess) -> None:
    """20 tokens never fit 10 a minute: the gateway's `x-should-retry: false` trailer (as
    HTTP's header) is what keeps the client from waiting out the RetryInfo."""
    client = Tandem(gateway.grpc, key=NARROW, max_retries=0)
    with client, pytest.raises(RateLimitError) as caught:
        client.chat([{"role": "user", "content": "w " * 20}], model="echo")
    assert caught.value.trailers.get("x-should-retry") == "false"
    assert caught.value.should_retry is False
    assert caught.value.retry_after is not None


def test_tool_call_and_reasoning_events(gateway: TandemProcess, fake: FakeUpstream) -> None:
    fake.reset("tools", "reasoning")
    with Tandem(gateway.grpc, key=USER) as client:
        tools = list(client.stream([{"role": "user", "content": "weather?"}], model="relay"))
        thought = list(client.stream([{"role": "user", "content": "think"}], model="relay"))
    calls = [e for e in tools if isinstance(e, ToolCallDelta)]
    assert calls
    assert calls[0].id
    assert calls[0].name
    by_call: dict[int, str] = {}
    for call in calls:
        by_call[call.call_index] = by_call.get(call.call_index, "") + call.arguments
    assert len(by_call) == 2
    assert all(json.loads(arguments) is not None for arguments in by_call.values())
    assert Finished(0, "tool_calls") in tools
    assert isinstance(tools[-1], UsageEvent)
    reasoning = "".join(e.text for e in thought if isinstance(e, ReasoningDelta))
    assert reasoning == "let me think"
    kinds = [type(e) for e in thought]
    assert kinds.index(ReasoningDelta) < kinds.index(TextDelta)


def test_leaving_a_stream_cancels_its_call(gateway: TandemProcess) -> None:
    with Tandem(gateway.grpc, key=CLOSER) as client, Tandem(gateway.grpc, key=ADMIN_KEY) as admin:
        started = time.monotonic()
        for event in client.stream(
            [{"role": "user", "content": "a b c d e f g h i j"}], model="slow-echo"
        ):
            assert isinstance(event, TextDelta)
            break  # the stream is dropped: its call is cancelled
        assert time.monotonic() - started < 1

        def cancelled() -> list[str]:
            records = admin.usage(user="client-closer").records
            statuses = [r.status for r in records if r.model == "slow-echo"]
            assert "cancelled" in statuses, statuses
            return statuses

        eventually(cancelled, what="a cancelled record")


async def test_a_cancelled_task_cancels_its_stream(gateway: TandemProcess) -> None:
    async with AsyncTandem(gateway.grpc, key=SLOW) as client:
        first = asyncio.Event()

        async def read() -> None:
            async for event in client.stream(
                [{"role": "user", "content": "x y z w v"}], model="slow-echo"
            ):
                if isinstance(event, TextDelta):
                    first.set()

        task = asyncio.create_task(read())
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the channel is still good for the next call
        answer = await client.chat([{"role": "user", "content": "still here"}], model="echo")
        assert answer.choices[0].message.content == "still here"


def test_unavailable_is_retried_until_the_gateway_answers(gateway: TandemProcess) -> None:
    host, _, port = gateway.grpc.rpartition(":")
    with TcpProxy(host, int(port)) as proxy:
        proxy.cut()
        once = Tandem(f"127.0.0.1:{proxy.port}", key=USER, max_retries=0)
        with once, pytest.raises(UnavailableError):
            once.chat([{"role": "user", "content": "hi"}], model="echo")
        with Tandem(f"127.0.0.1:{proxy.port}", key=USER, max_retries=4) as client:
            restore = threading.Timer(0.3, proxy.restore)
            restore.start()
            started = time.monotonic()
            answer = client.chat([{"role": "user", "content": "back"}], model="echo")
            restore.join()
        assert answer.choices[0].message.content == "back"
        assert 0.3 <= time.monotonic() - started < 10


# --- the retry policy and the requests, as functions --------------------------------------


def rate_limited(**fields: Any) -> RateLimitError:
    fields = {"code": grpc.StatusCode.RESOURCE_EXHAUSTED, "retry_after": 1.5, **fields}
    return RateLimitError("rate limited", **fields)


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (rate_limited(), True),
        (rate_limited(retry_after=None), False),  # no RetryInfo: it names no time
        (rate_limited(retry_after=61.0), False),  # over a minute: the caller's decision
        (rate_limited(should_retry=False), False),  # x-should-retry: false
        (
            BudgetExceededError(
                "spent",
                code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                retry_after=2.0,
                error_code="budget_exceeded",
            ),
            False,
        ),
        (UnavailableError("down", code=grpc.StatusCode.UNAVAILABLE), True),
        (  # whatever its status, the gateway's trailer says asking again cannot help
            UnavailableError(
                "down", code=grpc.StatusCode.UNAVAILABLE, trailers={"x-should-retry": "false"}
            ),
            False,
        ),
        (UpstreamError("failed", code=grpc.StatusCode.UNAVAILABLE), False),
        (BadRequestError("bad", code=grpc.StatusCode.INVALID_ARGUMENT), False),
        (TandemError("?", code=grpc.StatusCode.INTERNAL), False),
    ],
)
def test_which_errors_are_retried(error: TandemError, retried: bool) -> None:
    assert (retry_delay(error, 0, 2, Deadline(None)) is not None) == retried


def test_retries_are_bounded_honour_retry_info_and_the_deadline() -> None:
    limited = rate_limited(retry_after=1.5)
    delays = [retry_delay(limited, 0, 2, Deadline(None)) for _ in range(50)]
    assert all(d is not None and 1.5 <= d <= 1.65 for d in delays)
    assert len(set(delays)) > 1  # jittered
    assert retry_delay(limited, 2, 2, Deadline(None)) is None  # max_retries spent
    assert retry_delay(limited, 0, 0, Deadline(None)) is None
    assert retry_delay(limited, 0, 2, Deadline(1.0)) is None  # it would wait past the deadline
    down = UnavailableError("down", code=grpc.StatusCode.UNAVAILABLE)
    backoff = [retry_delay(down, n, 10, Deadline(None)) or 0 for n in range(6)]
    assert all(0.75 * cap <= d <= cap for d, cap in zip(backoff, (0.5, 1, 2, 4, 8, 8), strict=True))


def test_requests_read_openai_style_dicts() -> None:
    request = chat_request(
        [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:x"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        "echo",
        {
            "stop": "END",
            "tool_choice": "auto",
            "temperature": 0.7,
            "max_tokens": None,
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
        },
    )
    assert request.model == "echo"
    assert list(request.stop) == ["END"]
    assert request.tool_choice.mode == "auto"
    assert request.temperature == 0.7
    assert not request.HasField("max_tokens")
    assert request.messages[1].parts[1].image_url.url == "data:x"
    assert not request.messages[1].HasField("content")
    assert request.messages[2].tool_calls[0].function.name == "f"
    assert request.tools[0].function.parameters["type"] == "object"
    with pytest.raises(ValueError, match="temprature"):
        chat_request([{"role": "user", "content": "hi"}], "", {"temprature": 1})


def test_channel_options() -> None:
    connection = Connection(keepalive_time_s=300, keepalive_timeout_s=20, max_message_bytes=1 << 20)
    options = dict(connection.channel_options())
    assert options["grpc.keepalive_time_ms"] == 300_000
    assert options["grpc.keepalive_timeout_ms"] == 20_000
    assert options["grpc.max_receive_message_length"] == 1 << 20
    assert options["grpc.max_send_message_length"] == 1 << 20
    assert Connection(key="k").call_metadata() == (("authorization", "Bearer k"),)
    assert Connection().call_metadata() == ()


# --- TLS from a CA file ------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[bytes, bytes, Path]:
    """A key and a certificate for 127.0.0.1 that is its own CA, and the CA's PEM file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tandem test CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(pem)
    return key_pem, pem, ca_file


class Models(models_pb2_grpc.ModelServiceServicer):
    def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        return models_pb2.ListModelsResponse(data=[models_pb2.Model(id="over-tls")])

    def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> models_pb2.Model:
        return models_pb2.Model(id=request.id)


def test_tls_trusts_the_ca_file(tmp_path: Path) -> None:
    key_pem, pem, ca_file = self_signed(tmp_path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    models_pb2_grpc.add_ModelServiceServicer_to_server(Models(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, pem)]))
    server.start()
    try:
        with Tandem(f"127.0.0.1:{port}", ca_file=ca_file, timeout=5) as client:
            assert [m.id for m in client.models()] == ["over-tls"]
        plaintext = Tandem(f"127.0.0.1:{port}", timeout=5, max_retries=0)
        with plaintext, pytest.raises(UnavailableError):
            plaintext.models()
    finally:
        server.stop(None)
