"""`/metrics` scraped from a live server after calls on every door: each pinned series,
its labels and its values; and with `--workers 2`, every scrape covering both workers."""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import orjson
import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from tandem.v1 import chat_pb2, chat_pb2_grpc, models_pb2, models_pb2_grpc

from tests.eventually import eventually
from tests.fake_upstream import FakeUpstream
from tests.servers import TandemProcess, children_of, start_tandem

CONFIG = """
providers:
  - {name: demo, kind: mock}
  - {name: up, kind: openai, base_url: "%(url)s", api_key: k, max_retries: 1}
models:
  - {name: echo, provider: demo}
  - {name: relay, provider: up, upstream: relay-upstream}
tiers:
  free: {default_model: echo, requests_per_minute: 100000}
  tight: {default_model: echo, requests_per_minute: 1}
auth: {required: false, jwt: {secret: "metrics-test-secret-0123456789abcdef", require_exp: false}}
usage: {store: none}
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Listed = list[tuple[str, frozenset[tuple[str, str]], float]]


def scrape_list(base_url: str) -> Listed:
    """Every sample of a scrape, in order (parsed by prometheus-client's parser)."""
    text = httpx.get(f"{base_url}/metrics").text
    return [
        (sample.name, frozenset(sample.labels.items()), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def by_name(listed: Listed) -> Samples:
    return {(name, labels): figure for name, labels, figure in listed}


def scrape(base_url: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return by_name(scrape_list(base_url))


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _stream_usage(lines: Iterator[str]) -> tuple[int, int]:
    """(prompt, completion) from the usage event of an OpenAI SSE stream."""
    for line in lines:
        if line.startswith("data: {"):
            event = orjson.loads(line[6:])
            if event.get("usage"):
                return event["usage"]["prompt_tokens"], event["usage"]["completion_tokens"]
    raise AssertionError("no usage in the stream")


def test_every_door_is_counted_with_its_protocol_model_status_and_tokens(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    fake.reset()
    before = scrape(gateway.base_url)
    tokens = [0, 0]

    def add(usage: dict[str, Any]) -> None:
        tokens[0] += usage["prompt_tokens"]
        tokens[1] += usage["completion_tokens"]

    with httpx.Client(base_url=gateway.base_url) as http:
        for path in ("/native/v1/chat/completions", "/v1/chat/completions"):
            answer = http.post(path, json={"model": "echo", "messages": user("one two three")})
            assert answer.status_code == 200
            add(answer.json()["usage"])
            body = {"model": "echo", "messages": user("four five"), "stream": True}
            if path.startswith("/v1"):
                body["stream_options"] = {"include_usage": True}
            with http.stream("POST", path, json=body) as stream:
                assert stream.status_code == 200
                prompt, completion = _stream_usage(stream.iter_lines())
                tokens[0] += prompt
                tokens[1] += completion
        ollama = http.post(
            "/api/chat", json={"model": "echo", "messages": user("six seven"), "stream": False}
        ).json()
        tokens[0] += ollama["prompt_eval_count"]
        tokens[1] += ollama["eval_count"]
        assert (
            http.post("/v1/embeddings", json={"model": "echo", "input": "x y"}).status_code == 200
        )
        tokens[0] += 2
        missing = http.post(
            "/v1/chat/completions", json={"model": "sk-secret", "messages": user("a")}
        )
        assert missing.status_code == 404
        assert http.get("/v1/models").status_code == 200

    with grpc.insecure_channel(gateway.grpc) as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        request = chat_pb2.ChatCompletionRequest(
            model="echo", messages=[chat_pb2.ChatMessage(role="user", content="eight nine")]
        )
        add_grpc = chat.CreateChatCompletion(request).usage
        tokens[0] += add_grpc.prompt_tokens
        tokens[1] += add_grpc.completion_tokens
        for chunk in chat.StreamChatCompletion(request):
            if chunk.HasField("usage"):
                tokens[0] += chunk.usage.prompt_tokens
                tokens[1] += chunk.usage.completion_tokens
        models_pb2_grpc.ModelServiceStub(channel).ListModels(models_pb2.ListModelsRequest())

    after = scrape(gateway.base_url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "tandem_requests_total"
    assert grew(requests, protocol="native", model="echo", status="200") == 2
    assert grew(requests, protocol="openai", model="echo", status="200") == 3
    assert grew(requests, protocol="openai", model="", status="200") == 1  # the listing
    assert grew(requests, protocol="openai", model="", status="404") == 1
    assert grew(requests, protocol="ollama", model="echo", status="200") == 1
    assert grew(requests, protocol="grpc", model="echo", status="OK") == 2
    assert grew(requests, protocol="grpc", model="", status="OK") == 1
    # one observation per request, time to first token for the streams only
    for protocol, calls, streams in (("native", 2, 1), ("openai", 3, 1), ("grpc", 2, 1)):
        labels = {"protocol": protocol, "model": "echo"}
        assert grew("tandem_request_duration_seconds_count", **labels) == calls
        assert grew("tandem_time_to_first_token_seconds_count", **labels) == streams
        assert grew("tandem_request_duration_seconds_sum", **labels) > 0
        assert grew("tandem_request_duration_seconds_bucket", le="+Inf", **labels) == calls
    assert grew("tandem_tokens_total", model="echo", kind="prompt") == tokens[0]
    assert grew("tandem_tokens_total", model="echo", kind="completion") == tokens[1]
    # a model without a price: its spend is there, and 0
    assert ("tandem_cost_usd_total", frozenset({("model", "echo")})) in after
    assert value(after, "tandem_cost_usd_total", model="echo") == 0
    assert value(after, "tandem_inflight_requests") == 0
    assert value(after, "tandem_draining") == 0
    # a name nobody serves is never a label
    assert not any("sk-secret" in dict(labels).get("model", "") for _, labels in after)


def test_upstream_errors_count_every_failed_attempt(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    before = scrape(gateway.base_url)
    fake.reset("500", "503")  # the first attempt and its one retry
    failed = httpx.post(
        f"{gateway.base_url}/v1/chat/completions", json={"model": "relay", "messages": user("a")}
    )
    assert failed.status_code == 502
    fake.reset("500", "drop")  # a retry that starts, then breaks mid-stream
    body = {"model": "relay", "messages": user("a b c d e"), "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body) as stream:
        assert stream.status_code == 200
        assert "error" in stream.read().decode()
    after = scrape(gateway.base_url)
    errors = value(after, "tandem_upstream_errors_total", provider="up") - value(
        before, "tandem_upstream_errors_total", provider="up"
    )
    assert errors == 4
    statuses = {
        status: value(
            after, "tandem_requests_total", protocol="openai", model="relay", status=status
        )
        - value(before, "tandem_requests_total", protocol="openai", model="relay", status=status)
        for status in ("200", "502")
    }
    assert statuses == {"200": 0, "502": 2}  # the stream cut after its 200 counts as its error


def test_refusals_by_a_rate_limit_are_counted_by_tier(gateway: TandemProcess) -> None:
    token = jwt.encode(
        {"sub": "tight-caller", "tier": "tight"}, "metrics-test-secret-0123456789abcdef"
    )
    headers = {"authorization": f"Bearer {token}"}
    before = scrape(gateway.base_url)
    codes = [
        httpx.post(
            f"{gateway.base_url}/v1/chat/completions",
            json={"messages": user("a")},
            headers=headers,
        ).status_code
        for _ in range(3)
    ]
    assert codes == [200, 429, 429]
    after = scrape(gateway.base_url)
    assert (
        value(after, "tandem_rate_limited_total", tier="tight")
        - value(before, "tandem_rate_limited_total", tier="tight")
        == 2
    )
    assert value(after, "tandem_rate_limited_total", tier="free") == value(
        before, "tandem_rate_limited_total", tier="free"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# the built-in mock model, priced: spend is counted in every worker
WORKERS_CONFIG = """
providers: [{name: demo, kind: mock}]
models: [{name: echo, provider: demo, price: {input_per_mtok: 1, output_per_mtok: 2}}]
usage: {store: none}
"""


def test_with_two_workers_every_scrape_shows_both_workers_figures(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # a previous run's: emptied at start
    http, grpc_port = _free_port(), _free_port()
    server = start_tandem(
        tmp_path,
        WORKERS_CONFIG,
        args=["--workers", "2", "--http", f"127.0.0.1:{http}", "--grpc", f"127.0.0.1:{grpc_port}"],
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    try:
        calls = 40
        for i in range(calls):  # a connection each: the kernel spreads them over the workers
            answer = httpx.post(
                f"{server.base_url}/v1/chat/completions",
                json={"model": "echo", "messages": user(f"call {i}")},
                headers={"connection": "close"},
            )
            assert answer.status_code == 200

        def counted() -> dict[str, float]:  # a call is counted just after its answer has gone
            per_worker: dict[str, float] = {
                path.name: sum(
                    sample.value
                    for family in MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
                    for sample in family.samples
                    if sample.name == "tandem_requests_total"
                )
                for path in metrics_dir.glob("counter_*.db")
            }
            assert sum(per_worker.values()) == calls, per_worker
            return per_worker

        per_worker = eventually(counted)
        assert "counter_1.db" not in per_worker
        served = [count for count in per_worker.values() if count]
        assert len(served) == 2, per_worker  # both workers served
        for _ in range(8):  # whichever worker answers the scrape
            samples = scrape(server.base_url)
            assert (
                value(
                    samples, "tandem_requests_total", protocol="openai", model="echo", status="200"
                )
                == calls
            )
            assert value(samples, "tandem_inflight_requests") == 0
            # each call's 2 prompt and 2 completion tokens at $1 and $2 a million: $6e-6 each
            spent = value(samples, "tandem_cost_usd_total", model="echo")
            assert spent == pytest.approx(calls * 6e-6, rel=1e-9)
    finally:
        assert server.terminate() == 0, server.stderr()
    assert os.listdir(metrics_dir)  # the operator's directory is kept


PROCESS_SERIES = (
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
)


def started_at(pid: int) -> float:
    """A process's start, in seconds since the epoch, as /proc says it."""
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    ticks = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    return boot + float(ticks) / os.sysconf("SC_CLK_TCK")


def resident_bytes(pid: int) -> int:
    """A process's resident memory, as /proc says it."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(("workers", "metrics_dir"), [(1, False), (1, True), (2, True)])
def test_process_series_are_summed_over_the_live_workers(
    tmp_path: Path, workers: int, metrics_dir: bool
) -> None:
    """Each `process_*` series once, without labels, whatever the number of workers
    and whichever worker answers the scrape: memory, CPU and descriptors summed, the
    earliest start. A value file left by a process that is no worker (here: this
    test's, as if it had the pid of a dead worker) is not counted."""
    ports = ("0", "0") if workers == 1 else (str(_free_port()), str(_free_port()))
    args = ["--workers", str(workers), "--http", f"127.0.0.1:{ports[0]}"]
    directory = tmp_path / "metrics"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(directory)} if metrics_dir else None
    server = start_tandem(tmp_path, None, args=[*args, "--grpc", f"127.0.0.1:{ports[1]}"], env=env)
    try:
        pids = children_of(server.proc.pid) if workers > 1 else [server.proc.pid]
        assert len(pids) == workers
        if metrics_dir:
            planted = MmapedDict(str(directory / f"counter_{os.getpid()}.db"))  # type: ignore[no-untyped-call]
            planted.close()  # type: ignore[no-untyped-call]
        for _ in range(2 * workers):  # a connection each: the kernel spreads them
            resident = [resident_bytes(pid) for pid in pids]
            listed = scrape_list(server.base_url)
            samples = by_name(listed)
            for name in PROCESS_SERIES:
                found = [labels for sample, labels, _ in listed if sample == name]
                assert found == [frozenset()], (name, found)
                assert value(samples, name) > 0, name
            assert value(samples, "process_start_time_seconds") == min(map(started_at, pids))
            memory = value(samples, "process_resident_memory_bytes")
            assert 0.8 * sum(resident) < memory < 1.25 * sum(resident), (memory, resident)
            assert memory > max(resident) * (1.5 if workers > 1 else 0.8)
            fds = [len(os.listdir(f"/proc/{pid}/fd")) for pid in pids]
            assert value(samples, "process_open_fds") >= sum(fds) - 2 * workers, fds
            assert (
                value(samples, "process_max_fds") == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            )
    finally:
        assert server.terminate() == 0, server.stderr()
