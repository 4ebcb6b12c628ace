"""A client that goes away cancels the core's work: HTTP (real uvicorn) and gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

import httpx
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc, embeddings_pb2

from http_bridge.app import create_app
from server.config import ServerConfig
from server.core.dataplane import DataPlane
from server.lifecycle import bind_socket, start_http_server
from server.usage import UsageRecord
from server.usage.budget import Settlement
from tests.grpc_in_process import grpc_channel
from tests.in_process import plane_over


class SlowProvider:
    """Streams a word every 50 ms, for 5 s, and notes when it is cancelled."""

    name = "slow"
    kind = "mock"
    max_retries = 0

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def stream(
        self, *args: object, **kwargs: object
    ) -> AsyncGenerator[list[chat_pb2.ChatCompletionChunk], None]:
        self.started.set()
        try:
            for i in range(100):
                await asyncio.sleep(0.05)
                chunk = chat_pb2.ChatCompletionChunk()
                chunk.choices.add(index=0).delta.content = f"w{i} "
                yield [chunk]
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled.set()
            raise

    async def embed(self, *args: object) -> embeddings_pb2.EmbeddingResponse:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class ListRecorder:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def record(self, record: UsageRecord, settlement: Settlement | None = None) -> None:
        self.records.append(record)

    async def flushed(self) -> None:
        return None

    async def drain(self) -> None:
        return None


@pytest.fixture
def provider() -> SlowProvider:
    return SlowProvider()


@pytest.fixture
def recorder() -> ListRecorder:
    return ListRecorder()


@pytest.fixture
def plane(provider: SlowProvider, recorder: ListRecorder) -> DataPlane:
    return plane_over(provider, recorder)


@contextlib.asynccontextmanager
async def live_http(plane: DataPlane) -> AsyncIterator[str]:
    """The real HTTP app on a real uvicorn, port 0, in this loop."""
    sock = bind_socket("127.0.0.1:0")
    port = sock.getsockname()[1]
    app = create_app(plane, plane.policy, max_body_bytes=1 << 20)
    server, task = await start_http_server(app, sock, ServerConfig(shutdown_grace_s=1))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


BODY = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/native/v1/chat/completions"])
async def test_stream_closes_upstream_when_client_disconnects(
    plane: DataPlane, provider: SlowProvider, recorder: ListRecorder, path: str
) -> None:
    async with live_http(plane) as base, httpx.AsyncClient(base_url=base) as client:
        async with client.stream("POST", path, json={**BODY, "stream": True}) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("data: ")
        # the client is gone: the provider must be cancelled within a second
        await asyncio.wait_for(provider.cancelled.wait(), timeout=1.0)
    assert [r.status for r in recorder.records] == ["cancelled"]


async def test_request_closes_upstream_when_client_disconnects(
    plane: DataPlane, provider: SlowProvider, recorder: ListRecorder
) -> None:
    async with live_http(plane) as base, httpx.AsyncClient(base_url=base) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/v1/chat/completions", json=BODY, timeout=0.3)
        assert provider.started.is_set()
        await asyncio.wait_for(provider.cancelled.wait(), timeout=1.0)
    assert [r.status for r in recorder.records] == ["cancelled"]


async def test_grpc_cancel_closes_upstream(
    plane: DataPlane, provider: SlowProvider, recorder: ListRecorder
) -> None:
    async with grpc_channel(plane, plane.policy) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        call = stub.StreamChatCompletion(
            chat_pb2.ChatCompletionRequest(
                messages=[chat_pb2.ChatMessage(role="user", content="hi")]
            )
        )
        await call.read()
        call.cancel()
        await asyncio.wait_for(provider.cancelled.wait(), timeout=1.0)
    assert [r.status for r in recorder.records] == ["cancelled"]
