"""Nothing is lost: records wait out a PostgreSQL outage, and SIGTERM flushes them
all after the drain (a real `tandem serve`, real streams, the store read after a restart)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
import httpx
import orjson
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.eventually import eventually_async
from tests.servers import TandemProcess, start_tandem
from tests.stores import count_records
from tests.tcp_proxy import TcpProxy

ADMIN_KEY = "durability-admin-key-0123456789"
CONFIG = """
providers: [{name: demo, kind: mock}, {name: slow, kind: mock, chunk_delay_ms: 50}]
models: [{name: echo, provider: demo}, {name: slow-echo, provider: slow}]
auth: {required: false, admin_keys: ["%(admin)s"]}
usage: {store: "%(store)s", flush_interval_ms: %(flush_ms)d, batch_size: 1000}
"""


def config(store: str, flush_ms: int) -> str:
    return CONFIG % {"admin": ADMIN_KEY, "store": store, "flush_ms": flush_ms}


def metric(gateway: TandemProcess, name: str) -> float:
    text = httpx.get(f"{gateway.base_url}/metrics").text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return float(found.group(1))


async def until_count(url: str, want: int, timeout_s: float = 15.0) -> int:
    """How many records the store holds, once it holds at least `want`."""

    async def enough() -> int:
        count = await count_records(url)
        assert count >= want, f"{count} of {want} records stored"
        return count

    return await eventually_async(enough, timeout_s, 0.1)


async def chat(client: httpx.AsyncClient, channel: grpc.aio.Channel, i: int) -> None:
    if i % 2:
        response = await client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": f"n {i}"}]}
        )
        assert response.status_code == 200
    else:
        request = chat_pb2.ChatCompletionRequest()
        request.messages.add(role="user", content=f"n {i}")
        await chat_pb2_grpc.ChatServiceStub(channel).CreateChatCompletion(request)


async def test_records_wait_out_a_store_outage_and_none_is_lost(
    tmp_path: Path, proxy: TcpProxy, proxied_pg: tuple[str, str]
) -> None:
    direct, through_proxy = proxied_pg
    gateway = start_tandem(tmp_path, config(through_proxy, 50))
    try:
        async with (
            httpx.AsyncClient(base_url=gateway.base_url) as client,
            grpc.aio.insecure_channel(gateway.grpc) as channel,
        ):
            await asyncio.gather(*(chat(client, channel, i) for i in range(5)))
            assert await until_count(direct, 5) == 5

            proxy.cut()
            # the request path never waits for the store: every call is answered
            await asyncio.gather(*(chat(client, channel, i) for i in range(30)))
            assert await asyncio.to_thread(metric, gateway, "tandem_usage_pending_records") == 30

            async def failed() -> bool:  # an attempt failed, and said so
                errors = await asyncio.to_thread(metric, gateway, "tandem_usage_write_errors_total")
                return errors >= 1 and "usage store unavailable" in gateway.stderr()

            await eventually_async(failed, what="a failed write")
            assert await count_records(direct) == 5

            proxy.restore()
            assert await until_count(direct, 35) == 35
            assert await asyncio.to_thread(metric, gateway, "tandem_usage_pending_records") == 0
            await asyncio.sleep(0.3)  # settle: a record written twice would land by now
            assert await count_records(direct) == 35  # once each
    finally:
        assert await asyncio.to_thread(gateway.terminate) == 0
    assert "usage records lost" not in gateway.stderr()


STREAMS = 100
WORDS = " ".join(f"w{i}" for i in range(20))  # 20 chunks, 50 ms apart: 1 s a stream


async def http_stream(client: httpx.AsyncClient, started: asyncio.Queue[int]) -> str:
    """The streamed text, once `[DONE]` came."""
    body = {"model": "slow-echo", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
    events: list[str] = []
    async with client.stream("POST", "/native/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                if not events:
                    started.put_nowait(1)
                events.append(line.removeprefix("data: "))
    assert events.pop() == "[DONE]"
    chunks = [orjson.loads(event) for event in events]
    return "".join(choice["delta"].get("content", "") for c in chunks for choice in c["choices"])


async def grpc_stream(channel: grpc.aio.Channel, started: asyncio.Queue[int]) -> str:
    request = chat_pb2.ChatCompletionRequest(model="slow-echo")
    request.messages.add(role="user", content=WORDS)
    text: list[str] = []
    async for chunk in chat_pb2_grpc.ChatServiceStub(channel).StreamChatCompletion(request):
        if not text:
            started.put_nowait(1)
        text.append("".join(choice.delta.content for choice in chunk.choices))
    return "".join(text)


async def test_sigterm_with_100_streams_in_flight_loses_no_record(
    tmp_path: Path, store_url: str
) -> None:
    settings = config(store_url, 600_000)  # only the shutdown flush writes anything
    gateway = start_tandem(tmp_path, settings)
    started: asyncio.Queue[int] = asyncio.Queue()
    try:
        async with (
            httpx.AsyncClient(
                base_url=gateway.base_url, timeout=30, limits=httpx.Limits(max_connections=STREAMS)
            ) as client,
            grpc.aio.insecure_channel(gateway.grpc) as channel,
        ):
            streams = [
                asyncio.create_task(
                    http_stream(client, started) if i % 2 else grpc_stream(channel, started)
                )
                for i in range(STREAMS)
            ]
            for _ in range(STREAMS):
                await asyncio.wait_for(started.get(), 20)
            gateway.proc.terminate()  # SIGTERM, every stream mid-answer
            answers = await asyncio.gather(*streams)
        assert await asyncio.to_thread(gateway.proc.wait, 30) == 0
    finally:
        gateway.kill()
    assert answers == [WORDS] * STREAMS
    assert "usage records lost" not in gateway.stderr()

    restarted = start_tandem(tmp_path, settings)
    try:
        async with httpx.AsyncClient(base_url=restarted.base_url) as client:
            response = await client.get(
                "/native/v1/usage",
                params={"limit": 1000},
                headers={"authorization": f"Bearer {ADMIN_KEY}"},
            )
        usage = response.json()
    finally:
        assert restarted.terminate() == 0
    records = usage["records"]
    assert usage["totals"]["requests"] == STREAMS
    assert {(r["status"], r["completion_tokens"], r["model"]) for r in records} == {
        ("ok", 20, "slow-echo")
    }
    assert sorted(r["protocol"] for r in records) == ["grpc"] * 50 + ["native"] * 50
