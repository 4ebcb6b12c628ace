"""A store the answer needs is down: 503 `unavailable_error` (gRPC UNAVAILABLE), never a 500.

PostgreSQL sits behind a proxy the test cuts (`tests/tcp_proxy.py`); the
gateway is a real `tandem serve`, the key a real `tandem keys create`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc, usage_pb2, usage_pb2_grpc

from tests.rpc_status import details_of
from tests.servers import TandemProcess, run_cli, start_tandem
from tests.tcp_proxy import TcpProxy

ADMIN_KEY = "unavailable-admin-key-0123456789"
CONFIG = """
providers: [{name: demo, kind: mock}]
models: [{name: echo, provider: demo}]
auth: {required: true, admin_keys: ["%(admin)s"], key_cache_s: 0}  # 0: a new key is read at once
usage: {store: "%(store)s", flush_interval_ms: 50}
"""
# what a client must never see: the store's driver, its address, a class name
INTERNALS = ("asyncpg", "postgres", "127.0.0.1", "Error", "Traceback", "Connection")


def create_key(config: Path) -> str:
    done = run_cli(
        "keys", "create", "--user", "u1", "--json", "--config", config, cwd=config.parent
    )
    assert done.returncode == 0, done.stderr
    key: str = orjson.loads(done.stdout)["key"]
    return key


def chat_body() -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["type"] == "unavailable_error"
    assert error["param"] is None
    assert not any(word in response.text for word in INTERNALS), response.text


async def grpc_unavailable(call: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    details = details_of(error)
    assert details.error_info is not None
    assert details.error_info.reason == "unavailable_error"
    assert not any(word in (error.details() or "") for word in INTERNALS), error.details()


@pytest.fixture
def gateway(tmp_path: Path, proxied_pg: tuple[str, str]) -> Iterator[tuple[TandemProcess, Path]]:
    _, through_proxy = proxied_pg
    settings = CONFIG % {"admin": ADMIN_KEY, "store": through_proxy}
    config = tmp_path / "keys.yaml"
    config.write_text(settings)
    process = start_tandem(tmp_path, settings)
    yield process, config
    assert process.terminate() == 0, process.stderr()


async def test_an_uncached_key_while_the_store_is_down_is_503_then_works_again(
    gateway: tuple[TandemProcess, Path], proxy: TcpProxy
) -> None:
    process, config = gateway
    key = create_key(config)  # never looked up by the gateway
    bearer = {"authorization": f"Bearer {key}"}
    metadata = (("authorization", f"Bearer {key}"),)
    request = chat_pb2.ChatCompletionRequest(model="echo")
    request.messages.add(role="user", content="hi")
    async with (
        httpx.AsyncClient(base_url=process.base_url) as client,
        grpc.aio.insecure_channel(process.grpc) as channel,
    ):
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        proxy.cut()
        assert_unavailable(
            await client.post("/v1/chat/completions", json=chat_body(), headers=bearer)
        )
        assert_unavailable(
            await client.post("/native/v1/chat/completions", json=chat_body(), headers=bearer)
        )
        assert_unavailable(await client.get("/native/v1/models", headers=bearer))
        await grpc_unavailable(stub.CreateChatCompletion(request, metadata=metadata))

        proxy.restore()
        response = await client.post("/v1/chat/completions", json=chat_body(), headers=bearer)
        assert response.status_code == 200, response.text
        answer = await stub.CreateChatCompletion(request, metadata=metadata)
        assert answer.choices[0].message.content == "hi"
    assert "Traceback" not in process.settled_stderr()


async def test_a_usage_read_while_the_store_is_down_is_503_then_works_again(
    gateway: tuple[TandemProcess, Path], proxy: TcpProxy
) -> None:
    process, _ = gateway
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        httpx.AsyncClient(base_url=process.base_url) as client,
        grpc.aio.insecure_channel(process.grpc) as channel,
    ):
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        assert (await client.get("/native/v1/usage", headers=admin)).status_code == 200
        proxy.cut()
        assert_unavailable(await client.get("/native/v1/usage", headers=admin))
        await grpc_unavailable(
            stub.GetUsage(
                usage_pb2.GetUsageRequest(), metadata=(("authorization", admin["authorization"]),)
            )
        )

        proxy.restore()
        response = await client.get("/native/v1/usage", headers=admin)
        assert response.status_code == 200, response.text
    assert "Traceback" not in process.settled_stderr()
