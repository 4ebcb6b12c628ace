"""Requests per second through one `tandem serve` worker, pinned to one core.

The load comes from a separate process pinned to the other core, over real
grpc.aio channels. Each scenario runs for `--seconds` after a warm-up, with
`--concurrency` calls in flight, and reports throughput and latency, first
for a bare grpc.aio servicer with canned answers (scripts/bare_grpc.py),
then for Tandem, with Tandem's throughput as a ratio of the baseline's.

    .venv/bin/python scripts/bench.py --seconds 10 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import uvloop
from tandem.v1 import chat_pb2, chat_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
usage: {store: none}
rate_limits: {backend: none}
"""


def tandem_command() -> list[str]:
    path = Path(tempfile.mkdtemp()) / "bench.yaml"
    path.write_text(CONFIG)
    command = [sys.executable, "-m", "server.cli", "serve", "--config", str(path)]
    return [*command, "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]


def start_server(command: list[str], core: int | None) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    if core is not None:
        os.sched_setaffinity(proc.pid, {core})
    assert proc.stdout is not None
    lines = [proc.stdout.readline().decode() for _ in range(2)]
    addresses = dict(line.strip().split(" listening on ") for line in lines)
    return proc, addresses["grpc"]


def _request(words: int) -> chat_pb2.ChatCompletionRequest:
    text = " ".join(f"word{i}" for i in range(words))
    return chat_pb2.ChatCompletionRequest(
        model="echo", messages=[chat_pb2.ChatMessage(role="user", content=text)]
    )


async def _drive(
    scenario: str, target: str, seconds: float, concurrency: int, words: int
) -> dict[str, float]:
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [chat_pb2_grpc.ChatServiceStub(c) for c in channels]
    request = _request(words)

    async def unary(stub: chat_pb2_grpc.ChatServiceAsyncStub) -> None:
        await stub.CreateChatCompletion(request)

    async def stream(stub: chat_pb2_grpc.ChatServiceAsyncStub) -> None:
        async for _ in stub.StreamChatCompletion(request):
            pass

    call: Callable[[chat_pb2_grpc.ChatServiceAsyncStub], Awaitable[None]] = (
        unary if scenario == "grpc-unary" else stream
    )
    latencies: list[float] = []

    async def worker(index: int, until: float, record: bool) -> None:
        stub = stubs[index % len(stubs)]
        while (now := time.perf_counter()) < until:
            await call(stub)
            if record:
                latencies.append(time.perf_counter() - now)

    warm_until = time.perf_counter() + 1.0
    await asyncio.gather(*(worker(i, warm_until, False) for i in range(concurrency)))
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(worker(i, until, True) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def _load(args: tuple[str, str, float, int, int, int | None]) -> dict[str, float]:
    scenario, target, seconds, concurrency, words, core = args
    if core is not None:
        os.sched_setaffinity(0, {core})
    return uvloop.run(_drive(scenario, target, seconds, concurrency, words))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--words", type=int, default=20, help="words (chunks) per answer")
    parser.add_argument("--scenarios", default="grpc-unary,grpc-stream")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = (cores[0], cores[1]) if len(cores) > 1 else (None, None)

    print(f"server pinned to core {server_core}, load to core {client_core}")
    print(f"{'server':<8}{'scenario':<14}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'ratio':>8}")
    servers = {
        "bare": [sys.executable, str(ROOT / "scripts" / "bare_grpc.py"), str(args.words)],
        "tandem": tandem_command(),
    }
    baseline: dict[str, float] = {}
    context = multiprocessing.get_context("spawn")
    for name, command in servers.items():
        proc, target = start_server(command, server_core)
        try:
            for scenario in args.scenarios.split(","):
                job = (scenario, target, args.seconds, args.concurrency, args.words, client_core)
                with context.Pool(1) as pool:
                    result = pool.apply(_load, (job,))
                rps = result["rps"]
                baseline.setdefault(scenario, rps)
                print(
                    f"{name:<8}{scenario:<14}{rps:>10.0f}{result['p50_ms']:>10.2f}"
                    f"{result['p99_ms']:>10.2f}{rps / baseline[scenario]:>8.2f}",
                    flush=True,
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
