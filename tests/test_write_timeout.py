"""Answers nobody reads, on a live `tandem serve` over raw sockets: `server.write_timeout_s`
closes them and cancels their upstream call, a slow but steady reader is served whole,
stuck streams cost little memory, and at `server.max_connections` the probes answer."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.eventually import eventually, eventually_async
from tests.fake_upstream import FakeUpstream
from tests.servers import TandemProcess, start_tandem

CONFIG = """
server: {write_timeout_s: %(write_timeout_s)s, max_connections: 64}
providers: [{name: up, kind: openai, base_url: "%(url)s", api_key: k}]
models: [{name: big, provider: up}]
usage: {store: "sqlite:///usage.db", flush_interval_ms: 20}
"""
FLOOD_MIB = 16  # far past what the kernel buffers for one socket (tcp_wmem's 4 MiB)
TCP_ESTABLISHED, TCP_CLOSE_WAIT = 1, 8  # tcpi_state: open, or the server's FIN not yet read
WAIT_S = 60.0  # far past every timeout configured here; never a timing assertion


@pytest.fixture(scope="module")
def gateway(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    config = CONFIG % {"write_timeout_s": 1, "url": fake.base_url}
    process = start_tandem(tmp_path_factory.mktemp("write-timeout"), config)
    yield process
    assert process.terminate() == 0, process.stderr()


def _stream_request(request_id: str, *, close: bool = False, stream: bool = True) -> bytes:
    body = orjson.dumps(
        {"model": "big", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    )
    connection = b"connection: close\r\n" if close else b""
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        b"x-request-id: "
        + request_id.encode()
        + b"\r\n"
        + connection
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _connect(server: TandemProcess, *, rcvbuf: int | None = None) -> socket.socket:
    host, port = server.http.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # a reader whose kernel takes almost nothing for it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT_S)
    sock.connect((host, int(port)))
    return sock


def _read_to_end(sock: socket.socket) -> bytes:
    """Everything until the server closes (EOF, or a reset once it aborted)."""
    parts = []
    try:
        while data := sock.recv(1 << 20):
            parts.append(data)
    except ConnectionResetError:
        pass
    return b"".join(parts)


def _closed(sock: socket.socket) -> bool:
    """The connection is gone (the server reset it), seen without reading a byte:
    reading would be the progress the server waits for."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    return state not in (TCP_ESTABLISHED, TCP_CLOSE_WAIT)


def _access_line(server: TandemProcess, request_id: str) -> dict[str, Any] | None:
    for line in server.stderr().splitlines():
        if line[:1] == "{" and request_id in line:
            entry: dict[str, Any] = orjson.loads(line)
            if entry.get("request_id") == request_id and "status" in entry:
                return entry
    return None


def _ledger_status(server: TandemProcess, request_id: str) -> str | None:
    records = httpx.get(f"{server.base_url}/native/v1/usage").json()["records"]
    return next((r["status"] for r in records if r["request_id"] == request_id), None)


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match, status
    return int(match.group(1)) * 1024


def test_streams_nobody_reads_are_closed_and_charged_cancelled(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    """Three sockets with a 4 KB receive buffer ask for 16 MiB each and never read."""
    ids = [f"stuck-{i}-{time.monotonic_ns()}" for i in range(3)]
    fake.reset(*[f"flood:{FLOOD_MIB}"] * len(ids))
    gone_before = len(fake.gone)
    socks = [_connect(gateway, rcvbuf=4096) for _ in ids]
    try:
        for sock, request_id in zip(socks, ids, strict=True):
            sock.sendall(_stream_request(request_id))
        for request_id in ids:  # reported once the server gave up on it
            line = eventually(
                partial(_access_line, gateway, request_id), WAIT_S, what="an access line"
            )
            assert line["status"] == 499  # the client is as good as gone
        for sock in socks:  # and the connection is closed, most of the answer never sent
            assert len(_read_to_end(sock)) < FLOOD_MIB * 1024 * 1024 // 2
    finally:
        for sock in socks:
            sock.close()
    for request_id in ids:
        assert (
            eventually(partial(_ledger_status, gateway, request_id), WAIT_S, what="a record")
            == "cancelled"
        )
    eventually(
        lambda: len(fake.gone) >= gone_before + len(ids),
        WAIT_S,
        what="the upstream calls cancelled",
    )


def test_a_whole_answer_nobody_reads_is_closed(gateway: TandemProcess, fake: FakeUpstream) -> None:
    """A 16 MiB answer written at once: the connection goes too, not only a stream's."""
    fake.reset(f"flood:{FLOOD_MIB}")
    with _connect(gateway, rcvbuf=4096) as sock:
        sock.sendall(_stream_request(f"whole-{time.monotonic_ns()}", stream=False))
        eventually(partial(_closed, sock), WAIT_S, what="the connection closed")
        assert len(_read_to_end(sock)) < FLOOD_MIB * 1024 * 1024 // 2


def test_a_slow_steady_reader_gets_the_whole_answer(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    """64 KiB every 50 ms, for far longer than `write_timeout_s: 1`, the writer paused
    all along: progress is what counts, not the total time."""
    request_id = f"steady-{time.monotonic_ns()}"
    fake.reset("flood:8")
    with _connect(gateway) as sock:
        sock.sendall(_stream_request(request_id, close=True))
        parts = []
        while data := sock.recv(65536):
            parts.append(data)
            time.sleep(0.05)
    answer = b"".join(parts)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert answer.count(b"x" * 8191) == 8 * 128  # every word of the 8 MiB
    assert eventually(partial(_ledger_status, gateway, request_id), WAIT_S, what="a record") == "ok"


def test_stuck_streams_hold_little_memory(
    tandem: Callable[..., TandemProcess], fake: FakeUpstream
) -> None:
    """20 stuck streams of 16 MiB each (320 MiB in all): the producer stops pulling from
    the upstream while the transport is paused, so each holds about one upstream read
    in its several forms, not its answer (measured: ~40 MiB for the 20, the same with
    64 MiB answers)."""
    server = tandem(CONFIG % {"write_timeout_s": 600, "url": fake.base_url})
    fake.reset("flood:1")  # warm: the first stream's one-off allocations
    with _connect(server) as sock:
        sock.sendall(_stream_request("warm", close=True))
        assert _read_to_end(sock).endswith(b"0\r\n\r\n")
    rss_before = _rss_bytes(server.proc.pid)
    fake.reset(*[f"flood:{FLOOD_MIB}"] * 20)
    requests_before = len(fake.requests)
    socks = [_connect(server, rcvbuf=4096) for _ in range(20)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(_stream_request(f"held-{i}"))
        eventually(
            lambda: len(fake.requests) >= requests_before + 20, WAIT_S, what="20 upstream calls"
        )
        peak = 0
        for _ in range(40):  # polled for a while: memory does not creep up either
            peak = max(peak, _rss_bytes(server.proc.pid) - rss_before)
            time.sleep(0.05)
    finally:
        for sock in socks:
            sock.close()
    assert peak < 160 * 1024 * 1024, f"20 stuck streams took {peak / 2**20:.0f} MiB"


def test_at_max_connections_the_probes_still_answer(
    tandem: Callable[..., TandemProcess],
) -> None:
    server = tandem("server: {max_connections: 4}\nusage: {store: none}\n")
    held = [_connect(server) for _ in range(4)]
    try:
        for path in ("/healthz", "/readyz"):
            with _connect(server) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
                answer = _read_to_end(sock)  # closed after the answer
            assert answer.startswith(b"HTTP/1.1 200 "), answer
            assert b"\r\nconnection: close\r\n" in answer
        with _connect(server) as sock:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: t\r\n\r\n")
            answer = _read_to_end(sock)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert orjson.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == (
            "too_many_connections"
        )
    finally:
        for sock in held:
            sock.close()


def test_a_grpc_stream_nobody_reads_is_ended_and_charged_cancelled(
    gateway: TandemProcess, fake: FakeUpstream
) -> None:
    """The gRPC door too: HTTP/2 flow control holds the messages of a client that takes
    none, and after `write_timeout_s` the call ends, its upstream call cancelled."""
    request_id = f"grpc-stuck-{time.monotonic_ns()}"
    # grpc takes a few MiB before flow control holds it: 64 MiB never fits in the buffers
    # on the way, so the upstream is still sending when the call is cut
    fake.reset("flood:64")
    gone_before = len(fake.gone)

    async def never_read() -> None:
        async with grpc.aio.insecure_channel(gateway.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            request = chat_pb2.ChatCompletionRequest(
                model="big", messages=[chat_pb2.ChatMessage(role="user", content="hi")]
            )
            call = stub.StreamChatCompletion(request, metadata=(("x-request-id", request_id),))
            try:

                async def ended() -> str | None:
                    return _ledger_status(gateway, request_id)  # nothing read meanwhile

                await eventually_async(ended, WAIT_S, what="the stuck call ended")
            finally:
                call.cancel()

    asyncio.run(never_read())
    assert _ledger_status(gateway, request_id) == "cancelled"
    eventually(lambda: len(fake.gone) > gone_before, WAIT_S, what="the upstream call cancelled")
    line = eventually(partial(_access_line, gateway, request_id), WAIT_S, what="an access line")
    assert line["status"] == "CANCELLED"  # as the HTTP door's 499: the client is as good as gone
    assert "Traceback" not in gateway.stderr()
