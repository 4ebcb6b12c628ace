"""OpenTelemetry spans over OTLP/gRPC, received by a real collector in the test process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc, embeddings_pb2, embeddings_pb2_grpc

from tests.eventually import eventually
from tests.fake_upstream import UPSTREAM_KEY, FakeUpstream
from tests.otlp_receiver import SPAN_KIND_SERVER, STATUS_CODE_ERROR, OtlpReceiver, ReceivedSpan
from tests.servers import TandemProcess, start_tandem

CONFIG = """
telemetry: {otlp_endpoint: "%(endpoint)s", service_name: tandem-test}
providers:
  - {name: demo, kind: mock}
  - {name: up, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0}
models:
  - {name: echo, provider: demo}
  - {name: gpt, provider: up, upstream: gpt-upstream}
  - {name: embed, provider: up, upstream: embed-upstream}
tiers:
  free: {default_model: echo}
"""
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}  # ms between batches (the SDK's default: 5 s)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as collector:
        yield collector


def config_for(endpoint: str, fake: FakeUpstream) -> str:
    return CONFIG % {"endpoint": endpoint, "url": fake.base_url, "key": UPSTREAM_KEY}


@pytest.fixture(scope="module")
def gateway(
    receiver: OtlpReceiver, fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    config = config_for(receiver.endpoint, fake)
    process = start_tandem(tmp_path_factory.mktemp("traced"), config, env=FAST_EXPORT)
    yield process
    assert process.terminate() == 0, process.stderr()


@pytest.fixture
def http(gateway: TandemProcess, fake: FakeUpstream) -> Iterator[httpx.Client]:
    fake.reset()
    with httpx.Client(base_url=gateway.base_url, timeout=30) as client:
        yield client


@pytest.fixture
def channel(gateway: TandemProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.grpc) as channel:
        yield channel


def new_traceparent() -> tuple[str, str, str]:
    """(header, trace id, parent span id) of a sampled W3C trace context."""
    trace_id, parent_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


def chat_body(model: str, text: str = "one two three") -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def request_id_of(metadata: Any) -> str:
    """The `x-request-id` of a gRPC call's initial metadata."""
    (request_id,) = (value for key, value in metadata if key == "x-request-id")
    assert isinstance(request_id, str)
    return request_id


def sse_usage(text: str) -> Any:
    """The usage of an SSE chat stream: its last event before `[DONE]` that has one."""
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return next(u for e in reversed(events[:-1]) if (u := orjson.loads(e).get("usage")))


def header(headers: dict[str, str], name: str) -> str:
    """One header of a request the fake recorded, whatever its case."""
    (value,) = (v for k, v in headers.items() if k.lower() == name)
    return value


def upstream_request(fake: FakeUpstream, request_id: str) -> dict[str, str]:
    """The headers of the one upstream request that carried `x-request-id: request_id`."""
    (headers,) = (
        r.headers for r in fake.requests if header(r.headers, "x-request-id") == request_id
    )
    return headers


def assert_only_span(receiver: OtlpReceiver, span: ReceivedSpan) -> None:
    """No second span of the same request arrives in a later batch."""
    time.sleep(0.5)  # five batches at FAST_EXPORT's pace
    request_id = span.attributes["tandem.request_id"]
    spans = [s for s in receiver.spans if s.attributes.get("tandem.request_id") == request_id]
    assert spans == [span]


@pytest.mark.parametrize(
    ("path", "stream", "protocol"),
    [
        ("/v1/chat/completions", False, "openai"),
        ("/v1/chat/completions", True, "openai"),
        ("/native/v1/chat/completions", False, "native"),
    ],
)
def test_chat_span_carries_the_genai_attributes(
    http: httpx.Client, receiver: OtlpReceiver, path: str, stream: bool, protocol: str
) -> None:
    """One root SERVER span `chat <model>`, with the call's GenAI attributes."""
    fields: dict[str, object] = {"temperature": 0.5, "max_tokens": 16, "top_p": 0.25}
    if stream:
        fields |= {"stream": True, "stream_options": {"include_usage": True}}
    response = http.post(path, json={**chat_body("echo"), **fields})
    assert response.status_code == 200, response.text
    usage = sse_usage(response.text) if stream else response.json()["usage"]
    request_id = response.headers["x-request-id"]

    span = receiver.for_request(request_id)
    assert span.name == "chat echo"
    assert span.kind == SPAN_KIND_SERVER
    assert span.resource["service.name"] == "tandem-test"
    assert span.parent_span_id == ""
    assert span.status_code != STATUS_CODE_ERROR
    assert len(span.trace_id) == 32
    assert len(span.span_id) == 16
    attributes = span.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "mock"
    assert attributes["gen_ai.request.model"] == "echo"
    assert attributes["gen_ai.response.model"] == "echo"
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 3
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.request.top_p"] == 0.25
    assert attributes["gen_ai.request.max_tokens"] == 16
    assert "gen_ai.request.seed" not in attributes  # only the fields the request sent
    assert attributes["tandem.provider"] == "demo"
    assert attributes["tandem.protocol"] == protocol
    assert "error.type" not in attributes
    assert_only_span(receiver, span)


def test_ollama_door_spans_say_their_protocol(http: httpx.Client, receiver: OtlpReceiver) -> None:
    """`/api/chat` and `/api/embed` make the same spans, with `tandem.protocol: ollama`."""
    options = {"temperature": 0.5, "num_predict": 16}
    body = {**chat_body("echo"), "stream": False, "options": options}
    response = http.post("/api/chat", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    span = receiver.for_request(response.headers["x-request-id"])
    assert span.name == "chat echo"
    assert span.attributes["tandem.protocol"] == "ollama"
    assert span.attributes["gen_ai.request.temperature"] == 0.5
    assert span.attributes["gen_ai.request.max_tokens"] == 16
    assert span.attributes["gen_ai.usage.input_tokens"] == answer["prompt_eval_count"]
    assert span.attributes["gen_ai.usage.output_tokens"] == answer["eval_count"] == 3

    response = http.post("/api/embed", json={"model": "embed", "input": ["a b"]})
    assert response.status_code == 200, response.text
    span = receiver.for_request(response.headers["x-request-id"])
    assert span.name == "embeddings embed"
    assert span.attributes["tandem.protocol"] == "ollama"
    assert span.attributes["gen_ai.response.model"] == "embed-upstream"


def embed_over(
    door: str, http: httpx.Client, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]
) -> tuple[str, int]:
    """Embed two texts with model `embed` through a door: (x-request-id, prompt tokens)."""
    texts = ["hello world", "other"]
    if door == "grpc":
        stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
        request = embeddings_pb2.EmbeddingRequest(model="embed", input=texts)
        answer, call = stub.CreateEmbeddings.with_call(request, metadata=metadata, timeout=30)
        return request_id_of(call.initial_metadata()), answer.usage.prompt_tokens
    path = "/v1/embeddings" if door == "openai" else "/native/v1/embeddings"
    response = http.post(path, json={"model": "embed", "input": texts}, headers=dict(metadata))
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"], response.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize("door", ["openai", "native", "grpc"])
def test_embeddings_span_names_the_public_and_the_upstream_model(
    http: httpx.Client,
    channel: grpc.Channel,
    receiver: OtlpReceiver,
    fake: FakeUpstream,
    door: str,
) -> None:
    """`embeddings <model>`; the upstream request carries the span's own context and
    the caller's `tracestate`, from a header or metadata alike."""
    traceparent, trace_id, parent_id = new_traceparent()
    context = (("traceparent", traceparent), ("tracestate", "vendor=e1"))
    request_id, prompt_tokens = embed_over(door, http, channel, context)

    span = receiver.for_request(request_id)
    assert span.name == "embeddings embed"
    assert span.kind == SPAN_KIND_SERVER
    assert span.resource["service.name"] == "tandem-test"
    assert (span.trace_id, span.parent_span_id) == (trace_id, parent_id)
    attributes = span.attributes
    assert attributes["gen_ai.operation.name"] == "embeddings"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "embed"
    assert attributes["gen_ai.response.model"] == "embed-upstream"
    assert attributes["gen_ai.usage.input_tokens"] == prompt_tokens == 3
    assert attributes["tandem.provider"] == "up"
    assert attributes["tandem.protocol"] == door
    upstream = upstream_request(fake, request_id)
    assert header(upstream, "traceparent") == f"00-{trace_id}-{span.span_id}-01"
    assert header(upstream, "tracestate") == "vendor=e1"
    assert_only_span(receiver, span)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_grpc_metadata_traceparent_is_the_parent(
    channel: grpc.Channel, receiver: OtlpReceiver, stream: bool
) -> None:
    """A `traceparent` in the call's metadata is the span's parent; the protocol is grpc."""
    traceparent, trace_id, parent_id = new_traceparent()
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    request = chat_pb2.ChatCompletionRequest(
        model="echo",
        messages=[chat_pb2.ChatMessage(role="user", content="four words right here")],
        temperature=0.5,
        max_completion_tokens=3,
        seed=7,
    )
    metadata = (("traceparent", traceparent),)
    if stream:
        chunks = stub.StreamChatCompletion(request, metadata=metadata, timeout=30)
        usage = list(chunks)[-1].usage
        initial = chunks.initial_metadata()
    else:
        answer, call = stub.CreateChatCompletion.with_call(request, metadata=metadata, timeout=30)
        usage, initial = answer.usage, call.initial_metadata()
    request_id = request_id_of(initial)

    span = receiver.for_request(request_id)
    assert span.name == "chat echo"
    assert span.kind == SPAN_KIND_SERVER
    assert (span.trace_id, span.parent_span_id) == (trace_id, parent_id)
    assert span.span_id != parent_id
    attributes = span.attributes
    assert attributes["tandem.protocol"] == "grpc"
    assert attributes["gen_ai.provider.name"] == "mock"
    assert attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens > 0
    assert attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens == 3
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.request.max_tokens"] == 3
    assert attributes["gen_ai.request.seed"] == 7


@pytest.mark.parametrize("incoming", [True, False], ids=["traceparent", "no-traceparent"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_the_upstream_call_carries_the_trace_on(
    http: httpx.Client, receiver: OtlpReceiver, fake: FakeUpstream, incoming: bool, stream: bool
) -> None:
    """The upstream gets `traceparent` naming the span as parent, the caller's
    `tracestate` and the request id; without an incoming `traceparent` the span is a
    root of a new trace."""
    traceparent, trace_id, parent_id = new_traceparent()
    headers = {"traceparent": traceparent, "tracestate": "vendor=a1,other=b2"} if incoming else {}
    fields: dict[str, object] = {"temperature": 0.5}
    if stream:
        fields |= {"stream": True, "stream_options": {"include_usage": True}}
    response = http.post(
        "/v1/chat/completions", json={**chat_body("gpt"), **fields}, headers=headers
    )
    assert response.status_code == 200, response.text
    usage = sse_usage(response.text) if stream else response.json()["usage"]
    request_id = response.headers["x-request-id"]

    span = receiver.for_request(request_id)
    assert span.name == "chat gpt"
    if incoming:
        assert (span.trace_id, span.parent_span_id) == (trace_id, parent_id)
    else:
        assert span.parent_span_id == ""
        assert span.trace_id != trace_id
    attributes = span.attributes
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt"
    assert attributes["gen_ai.response.model"] == "gpt-upstream"
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"] == 7
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 3
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["tandem.provider"] == "up"
    upstream = upstream_request(fake, request_id)
    version, sent_trace, sent_parent, flags = header(upstream, "traceparent").split("-")
    assert (version, sent_trace, sent_parent) == ("00", span.trace_id, span.span_id)
    assert int(flags, 16) & 1  # sampled (a new trace may also set bit 2: its id is random)
    assert header(upstream, "x-request-id") == request_id
    sent_state = [v for k, v in upstream.items() if k.lower() == "tracestate"]
    assert sent_state == (["vendor=a1,other=b2"] if incoming else [])


@pytest.mark.parametrize(
    ("script", "model", "status", "name"),
    [
        ("400", "gpt", 400, "chat gpt"),
        ("ok", "no-such-model", 404, "chat"),
        ("500", "gpt", 502, "chat gpt"),
    ],
    ids=["upstream-400", "unknown-model", "upstream-500"],
)
def test_a_failed_call_still_makes_its_span(
    http: httpx.Client,
    receiver: OtlpReceiver,
    fake: FakeUpstream,
    script: str,
    model: str,
    status: int,
    name: str,
) -> None:
    """A call that fails makes its span all the same, with `error.type`; its status is
    ERROR for the gateway's failures (5xx) only, as OpenTelemetry has server spans."""
    fake.reset(script)
    traceparent, trace_id, parent_id = new_traceparent()
    response = http.post(
        "/v1/chat/completions", json=chat_body(model), headers={"traceparent": traceparent}
    )
    assert response.status_code == status, response.text
    request_id = response.headers["x-request-id"]

    span = receiver.for_request(request_id)
    assert span.name.startswith(name)
    assert span.kind == SPAN_KIND_SERVER
    assert (span.status_code == STATUS_CODE_ERROR) == (status >= 500)
    assert (span.trace_id, span.parent_span_id) == (trace_id, parent_id)
    assert span.attributes["error.type"] == response.json()["error"]["type"]
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.attributes["tandem.protocol"] == "openai"
    assert_only_span(receiver, span)


def test_only_chat_and_embeddings_make_spans(http: httpx.Client, receiver: OtlpReceiver) -> None:
    """Listing models makes no span (nor do the probes); the chat after it does."""
    for path in ("/v1/models", "/v1/models/echo", "/native/v1/models", "/healthz", "/readyz"):
        response = http.get(path, headers={"x-request-id": f"no-span-{path.replace('/', '_')}"})
        assert response.status_code == 200, response.text
    response = http.post("/v1/chat/completions", json=chat_body("echo"))
    assert response.status_code == 200, response.text
    receiver.for_request(response.headers["x-request-id"])  # exported after anything before it
    assert not [
        span
        for span in receiver.spans
        if str(span.attributes.get("tandem.request_id")).startswith("no-span-")
        or not span.name.startswith(("chat", "embeddings"))
    ]


def test_spans_still_buffered_at_sigterm_are_exported_before_exit(
    tandem: Any, receiver: OtlpReceiver, fake: FakeUpstream
) -> None:
    """SIGTERM flushes the spans the batch has not sent yet, then the server exits 0."""
    slow_export = {"OTEL_BSP_SCHEDULE_DELAY": "600000"}  # never on schedule within the test
    server: TandemProcess = tandem(config_for(receiver.endpoint, fake), env=slow_export)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        response = client.post("/v1/chat/completions", json=chat_body("echo"))
        assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    assert server.terminate() == 0, server.stderr()
    span = receiver.for_request(request_id, timeout=0)  # already there when the process exited
    assert span.name == "chat echo"


def closed_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port: int = listener.getsockname()[1]
    return port


@pytest.fixture
def silent_collector() -> Iterator[int]:
    """A port that accepts connections (into the backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("collector", ["closed", "silent"])
def test_a_collector_that_is_down_fails_no_request(
    tandem: Any,
    fake: FakeUpstream,
    request: pytest.FixtureRequest,
    collector: str,
) -> None:
    """Requests succeed whether the collector refuses or never answers, and the
    server still exits 0 on SIGTERM."""
    port = closed_port() if collector == "closed" else request.getfixturevalue("silent_collector")
    fake.reset()
    server: TandemProcess = tandem(config_for(f"http://127.0.0.1:{port}", fake), env=FAST_EXPORT)
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for i in range(6):
            model = "echo" if i % 2 else "gpt"
            response = client.post("/v1/chat/completions", json=chat_body(model, f"call {i}"))
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == f"call {i}"
        response = client.post("/v1/embeddings", json={"model": "embed", "input": ["x"]})
        assert response.status_code == 200, response.text
    assert server.terminate() == 0, server.stderr()


def test_without_an_endpoint_tracing_is_not_loaded() -> None:
    """Without `otlp_endpoint`, building telemetry loads neither tandem's tracing nor
    OpenTelemetry's trace SDK or exporter (only what the web stack itself imports)."""
    script = textwrap.dedent(
        """
        import sys
        import server.lifecycle
        from server.config import TelemetryConfig
        from server.telemetry import Telemetry

        before = {m for m in sys.modules if m.startswith("opentelemetry")}
        telemetry = Telemetry(TelemetryConfig())
        assert telemetry.tracer is None
        loaded = {m for m in sys.modules if m.startswith("opentelemetry")}
        assert loaded == before, sorted(loaded - before)
        tracing = ("server.telemetry.tracing", "opentelemetry.sdk.trace", "opentelemetry.exporter")
        assert not [m for m in sys.modules if m.startswith(tracing)], sorted(sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr


def attribute_chars(value: Any) -> int:
    """An attribute value's length: a list's is its strings' in all."""
    if isinstance(value, list):
        return sum(len(str(item)) for item in value)
    return len(str(value))


@pytest.mark.parametrize("stop", [["s" * 5000], ["t" * 600] * 16, ["u" * 100] * 20_000])
def test_no_span_attribute_is_longer_than_1_kib(
    http: httpx.Client, receiver: OtlpReceiver, stop: list[str]
) -> None:
    """A caller's long values are cut in the span, so that one request can never make
    an export batch a collector refuses; 20,000 stop sequences are a 400, and their
    span is as small (they were once copied whole: an 18 MB export)."""
    body = {**chat_body("echo"), "stop": stop, "user": "v" * 5000}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == (200 if len(stop) <= 16 else 400), response.text
    span = receiver.for_request(response.headers["x-request-id"])
    assert span.attributes["gen_ai.request.stop_sequences"][0].startswith(stop[0][:100])
    assert {
        key: attribute_chars(v) for key, v in span.attributes.items() if attribute_chars(v) > 1024
    } == {}


def test_a_malformed_tracestate_is_warned_of_once_a_minute_and_cut(
    gateway: TandemProcess, http: httpx.Client, channel: grpc.Channel
) -> None:
    """A caller-caused warning is written once a minute per kind (not once a request),
    and a caller's text reaches no log line longer than 256 characters."""
    traceparent, _, _ = new_traceparent()
    tracestate = "bad=" + "Zq" * 2000  # 4 KB: a value over W3C's 256 characters
    context = (("traceparent", traceparent), ("tracestate", tracestate))
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    for i in range(50):
        if i % 5:
            response = http.post("/v1/chat/completions", json=chat_body("echo"), headers=context)
            assert response.status_code == 200, response.text
        else:
            request = chat_pb2.ChatCompletionRequest(
                model="echo", messages=[chat_pb2.ChatMessage(role="user", content="hi")]
            )
            stub.CreateChatCompletion(request, metadata=context)

    def warnings(stderr: str) -> list[str]:
        return [line for line in stderr.splitlines() if "w3c" in line]

    eventually(lambda: warnings(gateway.stderr()))
    (warning,) = [orjson.loads(line) for line in warnings(gateway.settled_stderr())]
    assert warning["level"] == "warning"
    assert "ZqZq" in warning["message"]  # the caller's text, cut
    assert len(warning["message"]) < 400
    assert "Zq" * 129 not in gateway.settled_stderr()  # 258 characters of it, nowhere
