"""Requests per second through one `tandem serve` worker, pinned to one core.

Every scenario measures Tandem beside a baseline in the same run, pinned to
the same core, with the load (and the instant upstream) on the other core:

- `http-*`, `grpc-*`: model `echo` (the mock) against scripts/bare_server.py,
  canned answers from bare Starlette and bare grpc.aio on the same loop and
  uvicorn settings;
- `proxy-*`: model `proxied`, Tandem's `openai` provider in front of
  nginx (scripts/nginx_upstream.py), against scripts/bare_proxy.py (bare Starlette
  + one aiohttp session) in front of the same upstream; the upstream alone is
  measured too;
- `policy-*`: an API key and rate limits (memory, then Redis) on, usage
  recorded to SQLite: everything on, against Tandem with all of it off;
- `usage-*`: the usage ledger alone (SQLite, then PostgreSQL) against
  recording off (`usage.store: none`);
- `guard-*`: the HTTP transport bounds (http_bridge/transport.py) against
  Tandem on uvicorn's plain httptools protocol (scripts/serve_unguarded.py);
- `telemetry-*`: model `proxied` with the access log (on by default), then
  with tracing to scripts/otlp_sink.py too, against the access log off;
  with `--before DIR`, also a checkout of an earlier commit (its own venv):
  what the metrics cost, and the rest of a change.

`wrk` drives HTTP, a grpc.aio client process drives gRPC. Targets alternate
for `--rounds` rounds; medians are reported, and Tandem as a ratio of the
baseline (the first target).

    .venv/bin/python scripts/bench.py --seconds 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
import httpx
import orjson
import uvloop
from tandem.v1 import chat_pb2, chat_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
usage: {store: none}
rate_limits: {backend: none}
providers:
  - {name: mock, kind: mock}
  - {name: instant, kind: openai, base_url: "http://%(upstream)s/v1", api_key: bench}
  - {name: instant-sse, kind: openai, base_url: "http://%(upstream)s/sse/v1", api_key: bench}
models:
  - {name: echo, provider: mock}
  - {name: proxied, provider: instant}
  - {name: proxied-sse, provider: instant-sse}
"""
# nginx cannot read a body to choose: its streams are on their own path (and model)
STREAM_MODELS = {"proxied": "proxied-sse"}
STREAM_PATHS = {"upstream": "/sse/v1/chat/completions"}
POLICY_CONFIG = """
usage: {store: "sqlite:///%(db)s"}
providers: [{name: mock, kind: mock}]
models: [{name: echo, provider: mock}]
tiers:
  free: {default_model: echo, requests_per_minute: 100000000, tokens_per_minute: 1000000000}
auth: {required: true}
rate_limits: %(limits)s
"""
USAGE_CONFIG = """
usage: {store: "%s"}
rate_limits: {backend: none}
providers: [{name: mock, kind: mock}]
models: [{name: echo, provider: mock}]
"""
SCENARIOS = (
    "http-chat",
    "http-stream",
    "proxy-chat",
    "proxy-stream",
    "policy-chat",
    "policy-stream",
    "usage-chat",
    "usage-stream",
    "grpc-unary",
    "grpc-stream",
    "guard-chat",
    "guard-stream",
    "telemetry-chat",
    "telemetry-stream",
)
# scenario -> targets: (server, model); the baseline is the bare server, the bare
# proxy, or (policy-*) Tandem with no auth and no limits
TARGETS = {
    "http": [("bare", "echo"), ("tandem", "echo")],
    "grpc": [("bare", "echo"), ("tandem", "echo")],
    "proxy": [("upstream", "up"), ("bare-proxy", "up"), ("tandem", "proxied")],
    # auth (an API key) and rate limits on, against Tandem without them
    "policy": [("tandem", "echo"), ("tandem-memory", "echo"), ("tandem-redis", "echo")],
    # the usage ledger on, against `usage.store: none`
    "usage": [("tandem", "echo"), ("tandem-sqlite", "echo"), ("tandem-postgres", "echo")],
    # the header, body and connection bounds on, against uvicorn's plain protocol
    "guard": [("tandem-unguarded", "echo"), ("tandem", "echo")],
    # the access log, then tracing as well, against the access log off
    "telemetry": [("tandem-quiet", "proxied"), ("tandem", "proxied"), ("tandem-traced", "proxied")],
}


def start(
    command: list[str], core: int | None, cwd: Path = ROOT
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd)
    if core is not None:
        os.sched_setaffinity(proc.pid, {core})
    assert proc.stdout is not None
    lines = [proc.stdout.readline().decode() for _ in range(2)]
    return proc, dict(line.strip().split(" listening on ") for line in lines)


def _text(words: int) -> str:
    return " ".join(f"word{i}" for i in range(words))


# --- gRPC load: a grpc.aio client in its own process -----------------------------------


async def _drive_grpc(
    scenario: str, target: str, seconds: float, concurrency: int, words: int
) -> float:
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [chat_pb2_grpc.ChatServiceStub(c) for c in channels]
    request = chat_pb2.ChatCompletionRequest(
        model="echo", messages=[chat_pb2.ChatMessage(role="user", content=_text(words))]
    )

    async def unary(stub: chat_pb2_grpc.ChatServiceAsyncStub) -> None:
        await stub.CreateChatCompletion(request)

    async def stream(stub: chat_pb2_grpc.ChatServiceAsyncStub) -> None:
        async for _ in stub.StreamChatCompletion(request):
            pass

    call: Callable[[chat_pb2_grpc.ChatServiceAsyncStub], Awaitable[None]] = (
        unary if scenario == "grpc-unary" else stream
    )
    done = 0

    async def worker(index: int, until: float) -> None:
        nonlocal done
        stub = stubs[index % len(stubs)]
        while time.perf_counter() < until:
            await call(stub)
            done += 1

    await asyncio.gather(*(worker(i, time.perf_counter() + 1.0) for i in range(concurrency)))
    done = 0
    started = time.perf_counter()
    await asyncio.gather(*(worker(i, started + seconds) for i in range(concurrency)))
    rps = done / (time.perf_counter() - started)
    for channel in channels:
        await channel.close()
    return rps


def _grpc_load(args: tuple[str, str, float, int, int, int | None]) -> float:
    scenario, target, seconds, concurrency, words, core = args
    if core is not None:
        os.sched_setaffinity(0, {core})
    return uvloop.run(_drive_grpc(scenario, target, seconds, concurrency, words))


# --- HTTP load: wrk ---------------------------------------------------------------------


def _body(model: str, stream: bool, words: int) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": _text(words)}],
    }
    if stream:
        body["stream"] = True
    return body


def check_answer(
    address: str, path: str, model: str, stream: bool, words: int, authorization: str | None
) -> None:
    """One call before a target is timed: its answer whole (the words; usage, or a
    stream's `[DONE]`), so that an error path is never what is measured."""
    headers = {"authorization": authorization} if authorization else {}
    answer = httpx.post(
        f"http://{address}{path}", json=_body(model, stream, words), headers=headers, timeout=30
    )
    expected = _text(words)
    problem = None
    if answer.status_code != 200:
        problem = f"status {answer.status_code}"
    elif stream:
        events = [e for e in answer.text.split("\n\n") if e.startswith("data: {")]
        chunks = [orjson.loads(e[6:]) for e in events]
        text = "".join(c["delta"].get("content") or "" for e in chunks for c in e["choices"])
        if not answer.text.endswith("data: [DONE]\n\n"):
            problem = "no [DONE]"
        elif text.split() != expected.split():
            problem = f"text {text[:60]!r}"
    else:
        data = answer.json()
        text = data["choices"][0]["message"]["content"]
        if text.split() != expected.split() or not data.get("usage"):
            problem = f"answer {answer.text[:80]!r}"
    if problem:
        raise RuntimeError(f"{address}{path} ({model}): {problem}")


def _http_load(
    address: str,
    model: str,
    stream: bool,
    seconds: float,
    concurrency: int,
    words: int,
    core: int | None,
    authorization: str | None = None,
    path: str = "/v1/chat/completions",
) -> float:
    body = _body(model, stream, words)
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{orjson.dumps(body).decode()}]]\n"
        'wrk.headers["content-type"] = "application/json"\n'
        + (f'wrk.headers["authorization"] = "{authorization}"\n' if authorization else "")
    )
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(round(seconds), 1)}s", "-s", str(script)]
    if core is not None:
        command = ["taskset", "-c", str(core), *command]
    out = subprocess.run(
        [*command, f"http://{address}{path}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if re.search(r"Non-2xx", out):
        raise RuntimeError(f"errors during the run:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--words", type=int, default=20, help="words per answer (chunks streamed)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--before",
        type=Path,
        help="telemetry-*: also measure the checkout in DIR (an earlier commit, installed)",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("TANDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis for the policy-* scenarios",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TANDEM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
        help="PostgreSQL for the usage-* scenarios (a schema of its own, dropped after)",
    )
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    if any(not s.startswith("grpc") for s in scenarios) and shutil.which("wrk") is None:
        sys.exit("the HTTP scenarios need wrk: apt-get install wrk")
    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = (cores[0], cores[1]) if len(cores) > 1 else (None, None)

    bench_schema = f"tandem_bench_{os.getpid()}"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    addresses: dict[str, dict[str, str]] = {}
    scripts = ROOT / "scripts"

    def launch(name: str, command: list[str], core: int | None) -> None:
        procs[name], addresses[name] = start(command, core)

    def launch_tandem(name: str, config: Path, checkout: Path = ROOT) -> None:
        serve = ["serve", "--config", str(config), "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]
        python = sys.executable if checkout == ROOT else str(checkout / ".venv/bin/python")
        procs[name], addresses[name] = start(
            [python, "-m", "server.cli", *serve], server_core, cwd=checkout
        )

    try:
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            sys.exit("the bench needs nginx as its instant upstream: apt-get install nginx")
        launch(
            "upstream",
            [sys.executable, str(scripts / "nginx_upstream.py"), str(args.words)],
            client_core,
        )
        config = Path(tempfile.mkdtemp()) / "bench.yaml"
        config.write_text(CONFIG % {"upstream": addresses["upstream"]["http"]})
        launch(
            "bare", [sys.executable, str(scripts / "bare_server.py"), str(args.words)], server_core
        )
        launch(
            "bare-proxy",
            [
                sys.executable,
                str(scripts / "bare_proxy.py"),
                f"http://{addresses['upstream']['http']}/v1",
                f"http://{addresses['upstream']['http']}/sse/v1",
            ],
            server_core,
        )
        launch_tandem("tandem", config)
        work = Path(tempfile.mkdtemp())
        keys: dict[str, str] = {}
        for name, limits in (
            ("tandem-memory", "{backend: memory}"),
            (
                "tandem-redis",
                f'{{backend: redis, url: "{args.redis}", prefix: "bench:{os.getpid()}:"}}',
            ),
        ):
            if not any(s.startswith("policy") for s in scenarios):
                break
            policy_config = work / f"{name}.yaml"
            policy_config.write_text(POLICY_CONFIG % {"db": work / "keys.db", "limits": limits})
            created = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "server.cli",
                    "keys",
                    "create",
                    "--user",
                    "bench",
                    "--config",
                    str(policy_config),
                    "--json",
                ],
                capture_output=True,
                check=True,
                cwd=ROOT,
            )
            keys[name] = "Bearer " + orjson.loads(created.stdout)["key"]
            launch_tandem(name, policy_config)
        if any(s.startswith("usage") for s in scenarios):
            separator = "&" if "?" in args.postgres else "?"
            for name, store in (
                ("tandem-sqlite", f"sqlite:///{work / 'usage.db'}"),
                ("tandem-postgres", f"{args.postgres}{separator}search_path={bench_schema}"),
            ):
                usage_config = work / f"{name}.yaml"
                usage_config.write_text(USAGE_CONFIG % store)
                launch_tandem(name, usage_config)
        if any(s.startswith("guard") for s in scenarios):
            serve = ["serve", "--config", str(config), "--http", "127.0.0.1:0"]
            launch(
                "tandem-unguarded",
                [
                    sys.executable,
                    str(scripts / "serve_unguarded.py"),
                    *serve,
                    "--grpc",
                    "127.0.0.1:0",
                ],
                server_core,
            )
        if any(s.startswith("telemetry") for s in scenarios):
            quiet = work / "quiet.yaml"
            quiet.write_text(config.read_text() + "telemetry: {access_log: false}\n")
            launch_tandem("tandem-quiet", quiet)
            launch("otlp-sink", [sys.executable, str(scripts / "otlp_sink.py")], client_core)
            traced = work / "traced.yaml"
            endpoint = f"http://{addresses['otlp-sink']['grpc']}"
            traced.write_text(config.read_text() + f'telemetry: {{otlp_endpoint: "{endpoint}"}}\n')
            launch_tandem("tandem-traced", traced)
            if args.before is not None:
                launch_tandem("tandem-before", config, args.before.resolve())
                TARGETS["telemetry"].insert(0, ("tandem-before", "proxied"))
        context = multiprocessing.get_context("spawn")
        print(
            f"servers on core {server_core}; load and upstream on core {client_core}; "
            f"{args.rounds} x {args.seconds:g} s, {args.concurrency} in flight, {args.words} words"
        )
        checked: set[tuple[str, str]] = set()
        for scenario in scenarios:
            targets = TARGETS[scenario.split("-")[0]]
            results: dict[str, list[float]] = {name: [] for name, _ in targets}
            for _ in range(args.rounds):
                for name, model in targets:
                    if scenario.startswith("grpc"):
                        job = (
                            scenario,
                            addresses[name]["grpc"],
                            args.seconds,
                            args.concurrency,
                            args.words,
                            client_core,
                        )
                        with context.Pool(1) as pool:
                            rps = pool.apply(_grpc_load, (job,))
                    else:
                        stream = scenario.endswith("stream")
                        path = "/v1/chat/completions"
                        if stream:
                            model = STREAM_MODELS.get(model, model)
                            path = STREAM_PATHS.get(name, path)
                        if (scenario, name) not in checked:
                            check_answer(
                                addresses[name]["http"],
                                path,
                                model,
                                stream,
                                args.words,
                                keys.get(name),
                            )
                            checked.add((scenario, name))
                        rps = _http_load(
                            addresses[name]["http"],
                            model,
                            stream,
                            args.seconds,
                            args.concurrency,
                            args.words,
                            client_core,
                            keys.get(name),
                            path,
                        )
                    results[name].append(rps)
            medians = {name: statistics.median(values) for name, values in results.items()}
            baseline_name = (
                targets[0][0]
                if scenario.startswith(("policy", "usage", "telemetry"))
                else targets[-2][0]
            )
            cells = "  ".join(f"{name} {rps:,.0f}" for name, rps in medians.items())
            ratios = "  ".join(
                f"{name}/{baseline_name} {rps / medians[baseline_name]:.2f}"
                for name, rps in medians.items()
                if name.startswith("tandem") and name != baseline_name
            )
            print(f"{scenario:<13} {cells}   {ratios}", flush=True)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        if "tandem-postgres" in procs:
            asyncio.run(_drop_schema(args.postgres, bench_schema))


async def _drop_schema(dsn: str, schema: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


if __name__ == "__main__":
    main()
