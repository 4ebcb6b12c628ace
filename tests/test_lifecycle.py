"""`tandem serve` as a process: listening lines, SIGTERM drain order, exit codes."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.eventually import eventually_async
from tests.servers import TandemProcess, read_until_closed

SLOW = """
server: {shutdown_grace_s: 20, shutdown_delay_s: %(delay)s}
providers: [{name: demo, kind: mock, chunk_delay_ms: %(chunk_delay)s}]
models: [{name: echo, provider: demo}]
"""


def request(words: int) -> chat_pb2.ChatCompletionRequest:
    text = " ".join(f"w{i}" for i in range(words))
    return chat_pb2.ChatCompletionRequest(
        model="echo", messages=[chat_pb2.ChatMessage(role="user", content=text)]
    )


def test_listening_lines_go_to_stdout_and_logs_to_stderr(
    tandem: Callable[..., TandemProcess],
) -> None:
    server = tandem()
    assert server.http.startswith("127.0.0.1:")
    assert not server.http.endswith(":0")
    assert server.grpc.startswith("127.0.0.1:")
    assert not server.grpc.endswith(":0")
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200
    assert httpx.get(f"{server.base_url}/readyz").status_code == 200
    assert server.terminate() == 0
    assert " listening on " not in server.stderr()  # (the store path holds the test name)
    assert "stopped" in server.stderr()


async def test_sigterm_lets_every_slow_stream_finish_then_exits_zero(
    tandem: Callable[..., TandemProcess],
) -> None:
    server = tandem(SLOW % {"delay": 0, "chunk_delay": 100})
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)

        under_way: set[int] = set()

        async def stream(number: int) -> list[chat_pb2.ChatCompletionChunk]:
            chunks = []
            async for chunk in stub.StreamChatCompletion(request(15)):
                under_way.add(number)
                chunks.append(chunk)
            return chunks

        streams = [asyncio.create_task(stream(i)) for i in range(20)]

        async def all_under_way() -> bool:
            return len(under_way) == 20

        await eventually_async(all_under_way)
        assert not any(task.done() for task in streams)  # none is done (1.5 s each)
        server.proc.send_signal(15)
        results = await asyncio.gather(*streams)
    assert all(len(chunks) == 15 for chunks in results)
    assert all(chunks[-1].usage.completion_tokens == 15 for chunks in results)
    assert await asyncio.to_thread(server.proc.wait, 30) == 0


async def test_sigterm_goes_not_ready_but_keeps_serving_during_the_delay(
    tandem: Callable[..., TandemProcess],
) -> None:
    server = tandem(SLOW % {"delay": 1.5, "chunk_delay": 0})
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)  # typeshed's stub lists no methods
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == serving
        signalled = time.monotonic()
        server.proc.send_signal(15)
        async with httpx.AsyncClient() as client:

            async def not_ready() -> bool:
                return (await client.get(f"{server.base_url}/readyz")).status_code == 503

            await eventually_async(not_ready)
            assert (await client.get(f"{server.base_url}/healthz")).status_code == 200
        status = (await health.Check(health_pb2.HealthCheckRequest())).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        completion = await chat.CreateChatCompletion(request(3))
        assert completion.choices[0].message.content == "w0 w1 w2"
        assert time.monotonic() - signalled < 1.5
    assert await asyncio.to_thread(server.proc.wait, 30) == 0


async def test_streams_beyond_the_grace_are_cut_and_the_process_still_exits_zero(
    tandem: Callable[..., TandemProcess],
) -> None:
    config = SLOW.replace("shutdown_grace_s: 20", "shutdown_grace_s: 0.5")
    server = tandem(config % {"delay": 0, "chunk_delay": 200})
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        call = stub.StreamChatCompletion(request(50))
        await call.read()
        server.proc.send_signal(15)
        started = time.monotonic()
        received = 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while await call.read() != grpc.aio.EOF:
                received += 1
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert received < 50
        assert time.monotonic() - started < 5
    assert await asyncio.to_thread(server.proc.wait, 30) == 0


async def test_streams_cut_by_the_drain_are_logged_503_and_unavailable_without_tracebacks(
    tandem: Callable[..., TandemProcess],
) -> None:
    config = SLOW.replace("shutdown_grace_s: 20", "shutdown_grace_s: 0.5") + (
        'usage: {store: "sqlite:///usage.db", flush_interval_ms: 20}\n'
    )
    server = tandem(config % {"delay": 0, "chunk_delay": 200})
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "w " * 50}]}
    metadata = (("x-request-id", "drained-grpc"),)
    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=30) as client,
        grpc.aio.insecure_channel(server.grpc) as channel,
    ):
        headers = {"x-request-id": "drained-http"}
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as http:
            lines = http.aiter_lines()
            assert (await anext(lines)).startswith("data: ")  # under way
            call = chat_pb2_grpc.ChatServiceStub(channel).StreamChatCompletion(
                request(50), metadata=metadata
            )
            await call.read()  # under way
            server.proc.send_signal(15)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                while await call.read() != grpc.aio.EOF:
                    pass
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(httpx.RemoteProtocolError):  # cut, never ended
                async for _ in lines:
                    pass
    assert await asyncio.to_thread(server.proc.wait, 30) == 0
    stderr = server.stderr()
    assert "Traceback" not in stderr
    entries = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    statuses = {e["request_id"]: e["status"] for e in entries if e.get("event") == "request"}
    assert statuses["drained-http"] == 503
    assert statuses["drained-grpc"] == "UNAVAILABLE"
    with sqlite3.connect(server.stderr_path.parent / "usage.db") as db:  # flushed at exit
        rows = db.execute("SELECT request_id, status FROM usage_records").fetchall()
    assert {request_id for request_id, _ in rows} >= {"drained-http", "drained-grpc"}


def test_a_taken_port_fails_the_start_with_one_line(
    tandem: Callable[..., TandemProcess],
) -> None:
    first = tandem()
    from tests.servers import start_tandem

    with pytest.raises(RuntimeError, match=r"cannot listen for gRPC on 127\.0\.0\.1:\d+"):
        start_tandem(first.stderr_path.parent, args=["--grpc", first.grpc, "--http", "127.0.0.1:0"])
    with pytest.raises(RuntimeError, match=r"cannot listen for HTTP on 127\.0\.0\.1:\d+: Address"):
        start_tandem(first.stderr_path.parent, args=["--grpc", "127.0.0.1:0", "--http", first.http])


def _refused(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _one_answer(conn: socket.socket) -> bytes:
    """One answer, read by its content-length, on a connection kept alive."""
    conn.settimeout(20)
    received = b""
    while b"\r\n\r\n" not in received:
        received += conn.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


async def test_the_drain_serves_a_request_a_balancer_sent_as_its_connection_opened(
    tandem: Callable[..., TandemProcess],
) -> None:
    """uvicorn closes, as its drain begins, every connection with no request in its app:
    one just opened (a balancer sends at once), one whose first head is half read, and
    a kept-alive one whose next head is half read. Each would come back as the
    balancer's 502; here each is served, and then closed."""
    server = tandem(SLOW % {"delay": 0, "chunk_delay": 0})
    body = b'{"model": "echo", "messages": [{"role": "user", "content": "still here"}]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: tandem\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
    ) + body
    host, port = server.http.rsplit(":", 1)
    fresh, begun, kept = (socket.create_connection((host, int(port))) for _ in range(3))
    try:
        kept.sendall(request)
        assert b"still here" in await asyncio.to_thread(_one_answer, kept)
        begun.sendall(request[:20])
        kept.sendall(request[:20])
        server.proc.send_signal(15)
        # the listener closes in the same step as uvicorn's drain reaches each connection
        await eventually_async(lambda: asyncio.to_thread(_refused, server.http))
        for conn, rest in ((fresh, request), (begun, request[20:]), (kept, request[20:])):
            conn.sendall(rest)
            answer = await asyncio.to_thread(read_until_closed, conn)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            assert b"\r\nconnection: close\r\n" in answer.lower()
            assert b"still here" in answer
    finally:
        for conn in (fresh, begun, kept):
            conn.close()
    assert await asyncio.to_thread(server.proc.wait, 30) == 0
