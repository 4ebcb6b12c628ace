"""API keys narrow their tier, on a live server over HTTP and gRPC: their own `models`,
rates, concurrency and expiry apply together with the tier's, the tighter winning."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.eventually import eventually
from tests.keys_in_store import bearer, key_with, write_keys
from tests.rpc_status import details_of
from tests.servers import TandemProcess, start_tandem

CONFIG = """
providers: [{name: demo, kind: mock, chunk_delay_ms: 50}]
models: [{name: echo, provider: demo}, {name: premium, provider: demo}]
tiers:
  free:
    default_model: echo
    models: [echo, premium]
    requests_per_minute: 50
    tokens_per_minute: 100000
    max_concurrent_requests: 5
auth: {required: true, key_cache_s: 0.5, admin_keys: ["%(admin)s"]}
usage: {store: "sqlite:///keys.db"}
"""

ADMIN = "narrowing-admin-key"
PLAIN = key_with("plain")
CHANGED = key_with("changed")
ECHO_ONLY = key_with("echo-only", models=("echo",))
SLOW = key_with("slow", requests_per_minute=2, tokens_per_minute=1000)
LOOSE = key_with("loose", requests_per_minute=1000)  # looser than the tier: the tier wins
SINGLE = key_with("single", max_concurrent_requests=1)
EXPIRED = key_with("expired", expires_at=time.time() - 1)
EXPIRING = key_with("expiring", expires_at=time.time() + 3600)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TandemProcess]:
    directory = tmp_path_factory.mktemp("narrowing")
    keys = (PLAIN, CHANGED, ECHO_ONLY, SLOW, LOOSE, SINGLE, EXPIRED, EXPIRING)
    write_keys(f"sqlite:///{directory / 'keys.db'}", *(record for _, record in keys))
    process = start_tandem(directory, CONFIG % {"admin": ADMIN})
    yield process
    assert process.terminate() == 0


def chat(server: TandemProcess, secret: str, model: str = "echo") -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "two words"}]},
        headers=bearer(secret),
    )


def grpc_chat(server: TandemProcess, secret: str, model: str = "echo") -> grpc.StatusCode:
    async def call() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(server.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            request = chat_pb2.ChatCompletionRequest(
                model=model, messages=[chat_pb2.ChatMessage(role="user", content="x")]
            )
            try:
                await stub.CreateChatCompletion(request, metadata=tuple(bearer(secret).items()))
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    return asyncio.run(call())


def test_a_key_calls_only_its_own_models(server: TandemProcess) -> None:
    secret = ECHO_ONLY[0]
    assert chat(server, secret).status_code == 200
    refused = chat(server, secret, "premium")
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    assert refused.json()["error"]["param"] == "model"
    assert "API key" in refused.json()["error"]["message"]
    assert grpc_chat(server, secret, "premium") == grpc.StatusCode.PERMISSION_DENIED
    assert grpc_chat(server, secret) == grpc.StatusCode.OK
    assert chat(server, PLAIN[0], "premium").status_code == 200  # the tier's models
    listed = httpx.get(f"{server.base_url}/v1/models", headers=bearer(secret)).json()
    assert [m["id"] for m in listed["data"]] == ["echo"]


def test_a_keys_tighter_rates_apply_and_show_in_the_headers(server: TandemProcess) -> None:
    first, second, third = (chat(server, SLOW[0]) for _ in range(3))
    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 429]
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert "API key" in third.json()["error"]["message"]
    assert grpc_chat(server, SLOW[0]) == grpc.StatusCode.RESOURCE_EXHAUSTED
    loose = chat(server, LOOSE[0])  # a key's looser limit: the tier's is the tighter
    assert loose.headers["x-ratelimit-limit-requests"] == "50"
    assert loose.headers["x-ratelimit-limit-tokens"] == "100000"
    assert chat(server, PLAIN[0]).headers["x-ratelimit-limit-requests"] == "50"


async def test_a_keys_concurrency_applies_on_every_door(server: TandemProcess) -> None:
    stream = {
        "model": "echo",
        "stream": True,
        "messages": [{"role": "user", "content": "w " * 40}],  # 2 s of chunks
    }
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        request = http.build_request(
            "POST", "/v1/chat/completions", json=stream, headers=bearer(SINGLE[0])
        )
        held = await http.send(request, stream=True)
        try:
            assert held.status_code == 200
            refused = await http.post(
                "/v1/chat/completions", json=stream, headers=bearer(SINGLE[0])
            )
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
            assert "API key" in refused.json()["error"]["message"]
            async with grpc.aio.insecure_channel(server.grpc) as channel:
                stub = chat_pb2_grpc.ChatServiceStub(channel)
                call = chat_pb2.ChatCompletionRequest(
                    model="echo", messages=[chat_pb2.ChatMessage(role="user", content="x")]
                )
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await stub.CreateChatCompletion(call, metadata=tuple(bearer(SINGLE[0]).items()))
                assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                info = details_of(error.value).error_info
                assert info is not None
                assert info.metadata["code"] == "concurrency_limit_exceeded"
            other = await http.post(  # the tier's 5 for a key that does not narrow it
                "/v1/chat/completions",
                json={**stream, "stream": False},
                headers=bearer(PLAIN[0]),
            )
            assert other.status_code == 200
        finally:
            await held.aclose()


def test_an_expired_key_is_refused_like_a_revoked_one(server: TandemProcess) -> None:
    refused = chat(server, EXPIRED[0])
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    assert "expired" in refused.json()["error"]["message"]
    assert grpc_chat(server, EXPIRED[0]) == grpc.StatusCode.PERMISSION_DENIED
    assert chat(server, EXPIRING[0]).status_code == 200
    assert grpc_chat(server, EXPIRING[0]) == grpc.StatusCode.OK


def test_a_key_written_while_serving_is_narrowed_too(server: TandemProcess, tmp_path: Path) -> None:
    """A key made after start (the cache reads new ids within its TTL) narrows alike."""
    directory = Path(server.stderr_path).parent
    secret, record = key_with("late", models=("premium",))
    write_keys(f"sqlite:///{directory / 'keys.db'}", record)
    time.sleep(0.6)  # past key_cache_s: the new id is read on the first miss
    assert chat(server, secret, "premium").status_code == 200
    assert chat(server, secret, "echo").status_code == 403


def test_a_keys_narrowing_changed_by_the_admin_api_applies_within_the_cache_ttl(
    server: TandemProcess,
) -> None:
    secret, record = CHANGED
    assert chat(server, secret, "premium").status_code == 200
    assert chat(server, secret).headers["x-ratelimit-limit-requests"] == "50"
    changed = httpx.patch(
        f"{server.base_url}/admin/v1/keys/{record.id}",
        json={"models": ["echo"], "requests_per_minute": 10},
        headers=bearer(ADMIN),
    )
    assert changed.status_code == 200, changed.text

    def narrowed() -> bool:
        return chat(server, secret, "premium").status_code == 403

    eventually(narrowed, 5.0, what="the key's new models applied")
    assert chat(server, secret).headers["x-ratelimit-limit-requests"] == "10"
