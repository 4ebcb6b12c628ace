"""Per-tier `max_concurrent_requests`: a caller's calls in flight at once, every door
together, shared by replicas with the redis backend, each slot given back exactly once."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from tandem.v1 import chat_pb2, chat_pb2_grpc

from server.policy.redis_limiter import RedisLimiter
from tests.eventually import eventually_async
from tests.rpc_status import details_of
from tests.servers import TandemProcess, start_tandem
from tests.stores import REDIS_URL

LIMIT = 3
WORDS = 100  # a stream of 5 s: in flight for as long as a test holds it

CONFIG = """
providers: [{name: demo, kind: mock, chunk_delay_ms: 50}]
models: [{name: echo, provider: demo}]
tiers:
  free: {default_model: echo, max_concurrent_requests: %(limit)d}
rate_limits: %(limits)s
"""

STREAM = {
    "model": "echo",
    "stream": True,
    "messages": [{"role": "user", "content": "w " * WORDS}],
}


def _config(limits: str = "{backend: memory}") -> str:
    return CONFIG % {"limit": LIMIT, "limits": limits}


async def _open(http: httpx.AsyncClient, count: int) -> list[httpx.Response]:
    """`count` streams started at once; the admitted ones stay open, unread."""
    requests = [
        http.build_request("POST", "/v1/chat/completions", json=STREAM) for _ in range(count)
    ]
    return list(await asyncio.gather(*(http.send(r, stream=True) for r in requests)))


async def _hold(
    http: httpx.AsyncClient, count: int, timeout_s: float = 20.0
) -> list[httpx.Response]:
    """`count` admitted streams, held open, once slots given back are free (polled)."""

    async def admitted() -> list[httpx.Response] | None:
        responses = await _open(http, count)
        if all(r.status_code == 200 for r in responses):
            return responses
        for response in responses:
            await response.aclose()
        return None

    return await eventually_async(admitted, timeout_s, 0.1, what="slots given back")


async def _check_refusal(response: httpx.Response) -> None:
    assert response.status_code == 429
    body = (await response.aread(), response.json())[1]
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "concurrency_limit_exceeded"
    assert response.headers["retry-after"] == "1"


def _rate_limited(process: TandemProcess) -> float:
    text = httpx.get(f"{process.base_url}/metrics").text
    for line in text.splitlines():
        if line.startswith('tandem_rate_limited_total{tier="free"}'):
            return float(line.split()[-1])
    return 0.0


async def _grpc_refusal(process: TandemProcess) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(process.grpc) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        request = chat_pb2.ChatCompletionRequest(
            model="echo", messages=[chat_pb2.ChatMessage(role="user", content="hi")]
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.StreamChatCompletion(request):
                pass
    return refused.value


async def test_limit_admits_exactly_n_streams_and_frees_slots_as_they_end(
    tmp_path: Path,
) -> None:
    server = start_tandem(tmp_path, _config())
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            responses = await _open(http, LIMIT + 2)
            held = [r for r in responses if r.status_code == 200]
            assert len(held) == LIMIT, [r.status_code for r in responses]
            for refused in (r for r in responses if r.status_code != 200):
                await _check_refusal(refused)
            assert _rate_limited(server) == 2  # counted like any 429

            error = await _grpc_refusal(server)  # every door together
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = details_of(error)
            assert details.error_info is not None
            assert details.error_info.metadata["code"] == "concurrency_limit_exceeded"
            assert details.retry_info is not None
            assert details.retry_info.retry_delay.seconds == 1

            for response in held:  # the client goes away: every slot comes back
                await response.aclose()
            held = await _hold(http, LIMIT)
            for response in held:  # read to their end: every slot comes back
                assert b"[DONE]" in await response.aread()
                await response.aclose()
            held = await _hold(http, LIMIT)
            [over] = await _open(http, 1)
            await _check_refusal(over)
            for response in held:
                await response.aclose()
    finally:
        assert server.terminate() == 0, server.stderr()


async def _grpc_streams_admitted(stub: chat_pb2_grpc.ChatServiceAsyncStub, count: int) -> bool:
    """Whether `count` streams are admitted at once now; each is cancelled after its
    first chunk (the client goes away mid-stream)."""
    request = chat_pb2.ChatCompletionRequest(
        model="echo", messages=[chat_pb2.ChatMessage(role="user", content="w " * WORDS)]
    )
    calls = [stub.StreamChatCompletion(request) for _ in range(count)]
    try:
        for call in calls:
            await call.read()
        return True
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return False
    finally:
        for call in calls:
            call.cancel()


async def test_slot_is_given_back_when_a_grpc_stream_is_cancelled(tmp_path: Path) -> None:
    server = start_tandem(tmp_path, _config())
    try:
        async with grpc.aio.insecure_channel(server.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            for _ in range(3):  # each round's cancels give the slots back for the next
                await eventually_async(
                    lambda: _grpc_streams_admitted(stub, LIMIT), 20, 0.1, what="slots given back"
                )
    finally:
        assert server.terminate() == 0, server.stderr()


async def test_slot_is_given_back_when_the_call_fails(tmp_path: Path) -> None:
    config = """
providers: [{name: down, kind: openai, base_url: "http://127.0.0.1:1/v1", max_retries: 0}]
models: [{name: echo, provider: down}]
tiers:
  free: {default_model: echo, max_concurrent_requests: 1}
"""
    server = start_tandem(tmp_path, config)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            for _ in range(3):  # each failure gives its slot back, or the next one is a 429
                response = await http.post("/v1/chat/completions", json={**STREAM, "stream": False})
                assert response.status_code == 502, response.text
    finally:
        assert server.terminate() == 0, server.stderr()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_memory_backend_with_workers_gives_each_its_share_and_says_so(
    tmp_path: Path,
) -> None:
    http, grpc = f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"
    server = start_tandem(
        tmp_path, _config(), args=["--workers", "2", "--http", http, "--grpc", grpc]
    )
    try:
        warning = "tiers.free.max_concurrent_requests: with the memory backend each of the 2 "

        async def warned() -> bool:  # log lines leave from a thread
            return warning in server.stderr()

        await eventually_async(warned, 20, what="the warning")
        assert "allows 2 (ceil(3 / 2))" in server.stderr()
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http_client:
            responses = await _open(http_client, 12)  # over both workers: 2 each at most
            admitted = sum(r.status_code == 200 for r in responses)
            for response in responses:
                await response.aclose()
        assert 2 <= admitted <= 4
    finally:
        assert server.terminate() == 0, server.stderr()


@pytest.fixture
def redis_limits() -> str:
    return f'{{backend: redis, url: "{REDIS_URL}", prefix: "tandem-test:{uuid.uuid4().hex}:"}}'


async def test_redis_backend_shares_the_limit_across_replicas(
    tmp_path: Path, redis_limits: str
) -> None:
    replicas = [start_tandem(tmp_path, _config(redis_limits)) for _ in range(2)]
    a, b = replicas
    try:
        async with (
            httpx.AsyncClient(base_url=a.base_url, timeout=30) as on_a,
            httpx.AsyncClient(base_url=b.base_url, timeout=30) as on_b,
        ):
            held = await _open(on_a, LIMIT - 1) + await _open(on_b, 1)
            assert [r.status_code for r in held] == [200] * LIMIT
            for http in (on_a, on_b):
                [over] = await _open(http, 1)
                await _check_refusal(over)
            await held.pop().aclose()  # B's slot, given back: A may take it
            held += await _hold(on_a, 1)
            [over] = await _open(on_b, 1)
            await _check_refusal(over)
            for response in held:
                await response.aclose()
    finally:
        for replica in replicas:
            assert replica.terminate() == 0, replica.stderr()


async def test_a_killed_replicas_slots_are_freed_within_a_minute(
    tmp_path: Path, redis_limits: str
) -> None:
    doomed, survivor = (start_tandem(tmp_path, _config(redis_limits)) for _ in range(2))
    try:
        async with (
            httpx.AsyncClient(base_url=doomed.base_url, timeout=30) as on_doomed,
            httpx.AsyncClient(base_url=survivor.base_url, timeout=30) as on_survivor,
        ):
            held = await _open(on_doomed, LIMIT)
            assert [r.status_code for r in held] == [200] * LIMIT
            doomed.kill()  # SIGKILL: nothing is given back
            killed_at = time.monotonic()
            [over] = await _open(on_survivor, 1)
            await _check_refusal(over)
            for response in await _hold(on_survivor, LIMIT, timeout_s=60):
                await response.aclose()
            assert time.monotonic() - killed_at < 60
    finally:
        doomed.kill()
        assert survivor.terminate() == 0, survivor.stderr()


async def test_slot_leases_are_renewed_while_held_and_expire_once_not() -> None:
    """The lease logic with a lease of a second: a holder that lives keeps its slot
    past the lease; one that stops renewing (its replica died) loses it."""
    prefix = f"tandem-test:{uuid.uuid4().hex}:"
    holder = RedisLimiter(REDIS_URL, prefix=prefix, slot_lease_s=1.0)
    other = RedisLimiter(REDIS_URL, prefix=prefix, slot_lease_s=1.0)
    try:
        slot = await holder.take_slot("k", 1)
        assert slot is not None
        started = time.monotonic()
        while time.monotonic() - started < 2.5:  # past two leases: still held
            assert await other.take_slot("k", 1) is None
            await asyncio.sleep(0.1)
        assert holder._renewer is not None
        holder._renewer.cancel()  # as if its replica died: no renewal, no release
        taken = await eventually_async(lambda: other.take_slot("k", 1), 10, 0.1)
        other.release_slot(taken)
    finally:
        await holder.aclose()
        await other.aclose()


async def test_a_slot_redis_lost_is_added_back_while_its_call_lasts() -> None:
    """Redis restarted (or failed over) without the slot sets: the next renewal puts a
    held slot back, so the limit holds for the calls still in flight."""
    prefix = f"tandem-test:{uuid.uuid4().hex}:"
    holder = RedisLimiter(REDIS_URL, prefix=prefix, slot_lease_s=1.0)
    other = RedisLimiter(REDIS_URL, prefix=prefix, slot_lease_s=1.0)
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        assert await holder.take_slot("k", 1) is not None
        lost = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        assert lost
        await redis.delete(*lost)  # what a restart without persistence leaves
        await eventually_async(  # renewed every lease / 3
            lambda: redis.exists(*lost), 10, what="the held slot added back"
        )
        for _ in range(10):
            assert await other.take_slot("k", 1) is None
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
        await holder.aclose()
        await other.aclose()
