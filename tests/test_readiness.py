"""Readiness: not ready only while draining; a shared dependency that stops answering
leaves the replica ready but `degraded` (real `tandem serve`, PostgreSQL and Redis
behind proxies the tests cut)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.eventually import eventually_async
from tests.servers import TandemProcess
from tests.stores import count_records, redis_limits_config
from tests.tcp_proxy import TcpProxy, proxy_to

REDIS_URL = os.environ.get("TANDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RPM = 6000  # high enough never to refuse: the limiter is used, not exhausted
DEADLINE_S = 10.0

DRAIN = """
server: {shutdown_delay_s: 3, shutdown_grace_s: 5}
usage: {store: none}
"""
USAGE_STORE = """
usage: {store: "%(store)s", flush_interval_ms: 50}
"""


def chat_body(text: str = "hi") -> dict[str, Any]:
    return {"model": "echo", "messages": [{"role": "user", "content": text}]}


def dependency_up(metrics_text: str) -> dict[str, float]:
    """The `tandem_dependency_up` samples of a scrape, by dependency."""
    pattern = r'^tandem_dependency_up\{dependency="([^"]+)"\} (\S+)$'
    return {name: float(value) for name, value in re.findall(pattern, metrics_text, re.MULTILINE)}


async def readiness(client: httpx.AsyncClient) -> tuple[list[str], dict[str, float]]:
    """`/readyz` (which must be 200 and ready) and the dependency gauges."""
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert set(body) == {"status", "degraded"}, body
    assert body["status"] == "ready"
    degraded: list[str] = body["degraded"]
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    return degraded, dependency_up(metrics.text)


async def until_readiness(
    client: httpx.AsyncClient, degraded: list[str], up: dict[str, float]
) -> None:
    """Poll until `/readyz` says `degraded` and the gauges say `up`; ready all along."""

    async def seen() -> bool:
        now = await readiness(client)
        assert now == (degraded, up), f"still {now}, want {(degraded, up)}"
        return True

    await eventually_async(seen, DEADLINE_S, 0.1)


async def assert_chat_answers(client: httpx.AsyncClient, text: str) -> httpx.Response:
    response = await client.post("/v1/chat/completions", json=chat_body(text))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == text
    return response


@pytest.fixture
def redis_proxy() -> Iterator[TcpProxy]:
    """A proxy in front of the local Redis, for tests where it goes away."""
    with proxy_to(REDIS_URL, 6379) as proxy:
        yield proxy


def redis_config(proxy: TcpProxy, store: str = "none") -> str:
    target = urlsplit(REDIS_URL)
    userinfo, at, _ = target.netloc.rpartition("@")
    url = urlunsplit(target._replace(netloc=f"{userinfo}{at}127.0.0.1:{proxy.port}", path="/9"))
    prefix = f"tandem-test:{uuid.uuid4().hex}:"
    return redis_limits_config(url, prefix, RPM) + USAGE_STORE % {"store": store}


async def test_sigterm_is_not_ready_with_connection_close_while_still_serving(
    tandem: Callable[..., TandemProcess],
) -> None:
    server = tandem(DRAIN)
    async with (
        httpx.AsyncClient(base_url=server.base_url) as client,
        grpc.aio.insecure_channel(server.grpc) as channel,
    ):
        health: Any = health_pb2_grpc.HealthStub(channel)  # typeshed's stub lists no methods
        check = health_pb2.HealthCheckRequest(service="")
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "degraded": []}
        assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.SERVING
        answers = [
            ready,
            await client.get("/healthz"),
            await assert_chat_answers(client, "before"),
        ]
        assert all(answer.headers.get("connection") != "close" for answer in answers)

        server.proc.send_signal(signal.SIGTERM)

        async def not_ready_yet() -> httpx.Response | None:
            answer = await client.get("/readyz")
            return None if answer.status_code == 200 else answer

        not_ready = await eventually_async(not_ready_yet, DEADLINE_S, what="not ready")
        assert not_ready.status_code == 503
        assert not_ready.json() == {"status": "not ready", "failing": ["draining"]}
        assert (await health.Check(check)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        healthz = await client.get("/healthz")
        assert healthz.status_code == 200
        chat = await assert_chat_answers(client, "during the delay")
        for answer in (not_ready, healthz, chat):
            assert answer.headers.get("connection") == "close", answer.headers
    assert await asyncio.to_thread(server.proc.wait, 30) == 0, server.stderr()


async def test_usage_store_down_is_degraded_not_unready(
    tandem: Callable[..., TandemProcess], proxy: TcpProxy, proxied_pg: tuple[str, str]
) -> None:
    direct, through_proxy = proxied_pg
    server = tandem(USAGE_STORE % {"store": through_proxy})
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        assert await readiness(client) == ([], {"usage_store": 1.0})
        await assert_chat_answers(client, "before")

        proxy.cut()
        await until_readiness(client, ["usage_store"], {"usage_store": 0.0})
        for i in range(3):
            await assert_chat_answers(client, f"while down {i}")  # usage waits in memory
        assert (await readiness(client))[0] == ["usage_store"]

        proxy.restore()
        await until_readiness(client, [], {"usage_store": 1.0})
        await assert_chat_answers(client, "after")
    assert server.terminate() == 0, server.stderr()
    assert await count_records(direct) == 5  # what waited out the outage was written


async def test_redis_down_is_degraded_not_unready(
    tandem: Callable[..., TandemProcess], redis_proxy: TcpProxy
) -> None:
    server = tandem(redis_config(redis_proxy))
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        assert await readiness(client) == ([], {"redis": 1.0})
        before = await assert_chat_answers(client, "before")
        assert before.headers["x-ratelimit-limit-requests"] == str(RPM)

        redis_proxy.cut()
        await until_readiness(client, ["redis"], {"redis": 0.0})
        for i in range(3):  # limits turn local: still answered, still limited
            answer = await assert_chat_answers(client, f"while down {i}")
            assert answer.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert (await readiness(client))[0] == ["redis"]

        redis_proxy.restore()
        await until_readiness(client, [], {"redis": 1.0})
        await assert_chat_answers(client, "after")
    assert server.terminate() == 0, server.stderr()


async def test_both_down_lists_both_sorted_then_recovers(
    tandem: Callable[..., TandemProcess],
    proxy: TcpProxy,
    proxied_pg: tuple[str, str],
    redis_proxy: TcpProxy,
) -> None:
    _, through_proxy = proxied_pg
    server = tandem(redis_config(redis_proxy, store=through_proxy))
    everything_up = {"redis": 1.0, "usage_store": 1.0}
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        assert await readiness(client) == ([], everything_up)

        proxy.cut()
        redis_proxy.cut()
        await until_readiness(client, ["redis", "usage_store"], {"redis": 0.0, "usage_store": 0.0})
        await assert_chat_answers(client, "while both are down")

        redis_proxy.restore()
        await until_readiness(client, ["usage_store"], {"redis": 1.0, "usage_store": 0.0})
        proxy.restore()
        await until_readiness(client, [], everything_up)
        await assert_chat_answers(client, "after")
    assert server.terminate() == 0, server.stderr()
