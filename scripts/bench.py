"""`make bench`: one `tandem serve` worker beside a bare Python proxy and the upstream alone.

Every server runs pinned to the first core; nginx (the instant upstream,
scripts/nginx_upstream.py), wrk and the gRPC load client to the second, so
the upstream never takes the gateway's core. The rows:

- `upstream`: nginx alone, answering a fixed completion and a fixed stream
  of `--words` chunks, a finish chunk and a usage chunk;
- `bare proxy`: scripts/bare_proxy.py, bare Starlette and bare grpc.aio in
  front of one aiohttp session, JSON parsed and re-encoded: the baseline;
- `tandem (all off)`: no auth, no limits, no ledger, no access log;
- `tandem`: an API key, memory rate limits, the SQLite ledger, metrics and
  the access log: what the targets are measured on (and, for this checkout's
  rows, the `responses` figure: a `/v1/responses` stream, `store: false` as
  Codex sends it, whose CPU a request is held to 1.2x a chat stream's);
- `tandem + tracing`: the same, with spans exported to scripts/otlp_sink.py;
- with `--also`: `redis` (the limits in Redis), `postgres` (the ledger in
  PostgreSQL), `budgets` (`tandem` with a budget for each caller, on SQLite, and
  on PostgreSQL beside the PostgreSQL ledger row: what budgets cost, said apart),
  `unguarded` (uvicorn's plain protocol, without the bounds of
  http_bridge/transport.py); with `--before DIR`, an earlier checkout (its own
  venv) on the `tandem` config; with `--litellm`, LiteLLM's proxy on a priced
  model (its own venv, made on first use).

The figures are medians of `--rounds` rounds; in each round every figure is
taken of every row in turn. Every row's answers are checked (the words, the
usage, a stream's `[DONE]`) before it is timed, and a run with any error
fails, so an error path is never what is measured. CPU is every thread's,
per request; `added p50` is the p50 at one connection less the upstream's.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import asyncpg
import grpc
import httpx
import orjson
import uvloop
from tandem.v1 import chat_pb2, chat_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
LITELLM = "litellm==1.110.2"
# what its proxy needs: `litellm[proxy]` wants `litellm-proxy`, which the index lacks
LITELLM_PROXY = (
    *("APScheduler==3.11.3", "Expression==5.8.0", "PyJWT==2.15.1", "backoff==2.2.1"),
    *("cryptography==50.0.2", "fastapi==0.165.0", "fastapi-sso==0.23.0", "gunicorn==27.0.1"),
    *("mcp==2.3.0", "orjson==3.13.0", "python-multipart==0.0.34", "redis==8.1.0"),
    *("semver==3.1.2", "soundfile==0.14.0", "uvicorn==0.55.0", "uvloop==0.23.0"),
    "websockets==17.4",
)
LITELLM_KEY = "sk-bench-0123456789abcdef"
TICKS = os.sysconf("SC_CLK_TCK")

BASE_CONFIG = """
providers:
  - {name: instant, kind: openai, base_url: "http://%(upstream)s/v1", api_key: bench}
  - {name: instant-sse, kind: openai, base_url: "http://%(upstream)s/sse/v1", api_key: bench}
models:
  - {name: proxied, provider: instant%(price)s}
  - {name: proxied-sse, provider: instant-sse%(price)s}
"""
# this checkout's rows price their models (every record is costed, as a priced
# deployment's are); an earlier checkout's config has no `price`
PRICE = ", price: {input_per_mtok: 0.15, output_per_mtok: 0.6}"
OFF_CONFIG = """
usage: {store: none}
rate_limits: {backend: none}
telemetry: {access_log: false}
"""
ON_CONFIG = """
usage: {store: "%(usage)s"}
auth: {required: true}
rate_limits: %(limits)s
tiers:
  free:
    default_model: proxied
    requests_per_minute: 100000000
    tokens_per_minute: 1000000000%(budget)s
"""
# `--also budgets`: each caller of the tier has a budget it never reaches, so every
# request reserves its cost in the store at admission and waits for its settlement
BUDGET = "\n    budget: {usd: 1000000000, period: monthly}"
LITELLM_CONFIG = """
model_list:
  - model_name: proxied
    litellm_params:
      {model: openai/gpt-4o-mini, api_base: "http://%(upstream)s/v1", api_key: bench}
  - model_name: proxied-sse
    litellm_params:
      {model: openai/gpt-4o-mini, api_base: "http://%(upstream)s/sse/v1", api_key: bench}
litellm_settings: {telemetry: false}
"""
# nginx cannot read a body to choose: its stream is on a path (and a model) of its own
MODELS = {False: "proxied", True: "proxied-sse"}
UPSTREAM_PATHS = {False: "/v1/chat/completions", True: "/sse/v1/chat/completions"}
FIGURES = ("chat", "stream", "p50", "grpc-unary", "grpc-stream", "responses")
RESPONSES_PATH = "/v1/responses"  # the `responses` figure: a Responses API stream


@dataclass
class Row:
    name: str
    address: dict[str, str] = field(default_factory=dict)  # "http", "grpc": HOST:PORT
    pid: int = 0
    authorization: str | None = None
    http_path: Callable[[bool], str] = lambda stream: "/v1/chat/completions"
    has_responses: bool = False  # serves /v1/responses (this checkout's tandem rows)
    ready_s: float | None = None
    figures: dict[str, list[float]] = field(default_factory=dict)
    cpu_ms: dict[str, list[float]] = field(default_factory=dict)
    rss_mib: float | None = None

    @property
    def has_grpc(self) -> bool:
        return self.address.get("grpc", "-") != "-"

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", self.authorization),) if self.authorization else ()

    def median(self, figure: str) -> float | None:
        values = self.figures.get(figure)
        return statistics.median(values) if values else None


# --- processes --------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def cpu_s(pid: int) -> float:
    """CPU seconds of every thread of `pid` and its descendants."""
    total = 0
    for each in _tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def rss_mib(pid: int) -> float:
    total = 0
    for each in _tree(pid):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(match.group(1)) if match else 0
    return total / 1024


class Processes:
    def __init__(self, server_core: int | None, client_core: int | None) -> None:
        self.server_core = server_core
        self.client_core = client_core
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        command: list[str],
        *,
        core: int | None,
        cwd: Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> tuple[subprocess.Popen[bytes], dict[str, str], float]:
        """A server that prints two listening lines: (process, addresses, seconds to them)."""
        started = time.perf_counter()
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=cwd, env=env
        )
        self._procs.append(proc)
        if core is not None:
            os.sched_setaffinity(proc.pid, {core})
        assert proc.stdout is not None
        lines = [proc.stdout.readline().decode() for _ in range(2)]
        ready = time.perf_counter() - started
        if not all(" listening on " in line for line in lines):
            raise RuntimeError(f"{command[:3]} did not start: {lines!r}")
        addresses = dict(line.strip().split(" listening on ") for line in lines)
        return proc, addresses, ready

    def keep(self, proc: subprocess.Popen[bytes]) -> None:
        self._procs.append(proc)

    def stop_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


# --- answers ----------------------------------------------------------------------------


def _text(words: int) -> str:
    return " ".join(f"word{i}" for i in range(words))


def _body(model: str, stream: bool, words: int) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": _text(words)}],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _responses_body(words: int) -> dict[str, object]:
    # stateless, as Codex calls it: a stored response's write is its own cost
    return {"model": MODELS[True], "input": _text(words), "stream": True, "store": False}


def check_responses(row: Row, words: int) -> None:
    """The `responses` figure's call, checked whole: its text deltas and the usage of
    the `response.completed` that ends it."""
    headers = {"authorization": row.authorization} if row.authorization else {}
    url = f"http://{row.address['http']}{RESPONSES_PATH}"
    answer = httpx.post(url, json=_responses_body(words), headers=headers, timeout=30)
    events = [orjson.loads(e.split("data: ", 1)[1]) for e in answer.text.split("\n\n") if e]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    if answer.status_code != 200 or text.split() != _text(words).split():
        raise RuntimeError(f"{row.name} (responses): {answer.text[:200]!r}")
    if events[-1]["type"] != "response.completed" or not events[-1]["response"]["usage"]:
        raise RuntimeError(f"{row.name} (responses): ends with {events[-1]['type']}")


def check_http(row: Row, stream: bool, words: int) -> None:
    """One call before a row is timed, its answer checked whole: the words, the usage,
    a stream's `[DONE]`; so that an error path is never what is measured."""
    headers = {"authorization": row.authorization} if row.authorization else {}
    url = f"http://{row.address['http']}{row.http_path(stream)}"
    answer = httpx.post(url, json=_body(MODELS[stream], stream, words), headers=headers, timeout=30)
    problem = None
    if answer.status_code != 200:
        problem = f"status {answer.status_code}: {answer.text[:200]!r}"
    elif stream:
        chunks = [orjson.loads(e[6:]) for e in answer.text.split("\n\n") if e.startswith("data: {")]
        text = "".join(c["delta"].get("content") or "" for e in chunks for c in e["choices"])
        if not answer.text.endswith("data: [DONE]\n\n"):
            problem = "no [DONE]"
        elif text.split() != _text(words).split():
            problem = f"text {text[:60]!r}"
        elif not any(e.get("usage") for e in chunks):
            problem = "no usage"
    else:
        data = answer.json()
        text = data["choices"][0]["message"]["content"]
        if text.split() != _text(words).split() or not data.get("usage"):
            problem = f"answer {answer.text[:80]!r}"
    if problem:
        raise RuntimeError(f"{row.name} ({'stream' if stream else 'chat'}): {problem}")


def _grpc_request(words: int, stream: bool) -> chat_pb2.ChatCompletionRequest:
    return chat_pb2.ChatCompletionRequest(
        model=MODELS[stream], messages=[chat_pb2.ChatMessage(role="user", content=_text(words))]
    )


async def _check_grpc(target: str, words: int, metadata: tuple[tuple[str, str], ...]) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        answer = await stub.CreateChatCompletion(_grpc_request(words, False), metadata=metadata)
        if answer.choices[0].message.content.split() != _text(words).split():
            raise RuntimeError(f"gRPC answer {answer.choices[0].message.content[:60]!r}")
        if not answer.usage.total_tokens:
            raise RuntimeError("gRPC answer without usage")
        chunks = [
            c
            async for c in stub.StreamChatCompletion(_grpc_request(words, True), metadata=metadata)
        ]
        text = "".join(c.choices[0].delta.content for c in chunks if c.choices)
        if text.split() != _text(words).split() or not chunks[-1].usage.total_tokens:
            raise RuntimeError(f"gRPC stream {text[:60]!r}")


# --- load -------------------------------------------------------------------------------


def _wrk_script(body: dict[str, object], authorization: str | None) -> Path:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [[{orjson.dumps(body).decode()}]]\n"
        'wrk.headers["content-type"] = "application/json"\n'
        + (f'wrk.headers["authorization"] = "{authorization}"\n' if authorization else "")
    )
    return script


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(
    row: Row,
    stream: bool,
    seconds: float,
    connections: int,
    words: int,
    core: int | None,
    responses: bool = False,
) -> tuple[float, int, float]:
    """(requests a second, requests, p50 in ms) of one wrk run; `responses`: a Responses
    API stream instead of a chat."""
    body = _responses_body(words) if responses else _body(MODELS[stream], stream, words)
    script = _wrk_script(body, row.authorization)
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(round(seconds), 1)}s", "--latency"]
    if core is not None:
        command = ["taskset", "-c", str(core), *command]
    path = RESPONSES_PATH if responses else row.http_path(stream)
    url = f"http://{row.address['http']}{path}"
    out = subprocess.run(
        [*command, "-s", str(script), url], capture_output=True, text=True, check=True
    ).stdout
    shutil.rmtree(script.parent)
    if re.search(r"Non-2xx|Socket errors", out):
        raise RuntimeError(f"{row.name}: errors during the run:\n{out}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    if not (rps and count and p50):
        raise RuntimeError(f"{row.name}: wrk said\n{out}")
    return float(rps.group(1)), int(count.group(1)), float(p50.group(1)) * _UNITS[p50.group(2)]


async def _drive_grpc(
    target: str,
    stream: bool,
    seconds: float,
    concurrency: int,
    words: int,
    metadata: tuple[tuple[str, str], ...],
) -> tuple[float, int]:
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [chat_pb2_grpc.ChatServiceStub(c) for c in channels]
    request = _grpc_request(words, stream)
    done = 0

    async def worker(index: int, until: float) -> None:
        nonlocal done
        stub = stubs[index % len(stubs)]
        while time.perf_counter() < until:
            if stream:
                async for _ in stub.StreamChatCompletion(request, metadata=metadata):
                    pass
            else:
                await stub.CreateChatCompletion(request, metadata=metadata)
            done += 1

    await asyncio.gather(*(worker(i, time.perf_counter() + 0.5) for i in range(concurrency)))
    done = 0
    started = time.perf_counter()
    await asyncio.gather(*(worker(i, started + seconds) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    return done / elapsed, done


def _grpc_load(
    args: tuple[str, bool, float, int, int, tuple[tuple[str, str], ...], int | None],
) -> tuple[float, int]:
    target, stream, seconds, concurrency, words, metadata, core = args
    if core is not None:
        os.sched_setaffinity(0, {core})
    return uvloop.run(_drive_grpc(target, stream, seconds, concurrency, words, metadata))


# --- the rows ---------------------------------------------------------------------------


@contextmanager
def rows_started(args: argparse.Namespace, procs: Processes) -> Iterator[list[Row]]:
    work = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
    schema = f"tandem_bench_{os.getpid()}"
    try:
        lineup = _Lineup(procs, work)
        lineup.upstream_and_bare(args.words)
        _tandem_rows(args, lineup, schema)
        if args.litellm:
            lineup.rows.append(_litellm(args, procs, work, lineup.upstream))
        yield lineup.rows
    finally:
        procs.stop_all()
        if "postgres" in args.also or "budgets" in args.also:
            asyncio.run(_drop_schema(args.postgres, schema))
        shutil.rmtree(work, ignore_errors=True)


def _tandem_rows(args: argparse.Namespace, lineup: _Lineup, schema: str) -> None:
    """The `tandem` rows: all off, on, with tracing, and those `--also` and `--before` ask."""
    python, procs, on = sys.executable, lineup.procs, lineup.on
    lineup.tandem("tandem (all off)", OFF_CONFIG)
    lineup.tandem("tandem", on())
    if not args.no_tracing:
        _, sink, _ = procs.start([python, str(SCRIPTS / "otlp_sink.py")], core=procs.client_core)
        lineup.tandem(
            "tandem + tracing",
            on() + f'telemetry: {{otlp_endpoint: "http://{sink["grpc"]}"}}\n',
        )
    also = set(filter(None, args.also.split(",")))
    if "redis" in also:
        limits = f'{{backend: redis, url: "{args.redis}", prefix: "bench:{os.getpid()}:"}}'
        lineup.tandem("tandem, Redis limits", on(limits=limits))
    if "budgets" in also:
        lineup.tandem("tandem, budgets", on(budget=True))
    if also & {"postgres", "budgets"}:
        separator = "&" if "?" in args.postgres else "?"
        usage = f"{args.postgres}{separator}search_path={schema}"
        lineup.tandem("tandem, PostgreSQL ledger", on(usage=usage))
        if "budgets" in also:
            lineup.tandem("tandem, budgets, PostgreSQL", on(usage=usage, budget=True))
    if "unguarded" in also:
        lineup.tandem(
            "tandem, unguarded",
            on(),
            serve=[python, str(SCRIPTS / "serve_unguarded.py"), "serve"],
        )
    if args.before is not None:
        lineup.tandem(f"tandem at {args.before.name}", on(), checkout=args.before.resolve())


@dataclass
class _Lineup:
    """The rows as their servers start, each on the bench's cores, configs in `work`."""

    procs: Processes
    work: Path
    rows: list[Row] = field(default_factory=list)
    upstream: str = ""  # HOST:PORT of the nginx upstream

    def upstream_and_bare(self, words: int) -> None:
        python, procs = sys.executable, self.procs
        up, up_address, _ = procs.start(
            [python, str(SCRIPTS / "nginx_upstream.py"), str(words)], core=procs.client_core
        )
        self.upstream = up_address["http"]
        self.rows.append(Row("upstream", up_address, up.pid, http_path=UPSTREAM_PATHS.__getitem__))
        base = f"http://{self.upstream}"
        bare, address, ready = procs.start(
            [python, str(SCRIPTS / "bare_proxy.py"), f"{base}/v1", f"{base}/sse/v1"],
            core=procs.server_core,
        )
        self.rows.append(Row("bare proxy", address, bare.pid, ready_s=ready))

    def tandem(
        self, name: str, extra: str, *, serve: list[str] | None = None, checkout: Path = ROOT
    ) -> None:
        """A `tandem serve` row on the base config plus `extra` (a key made if auth is on)."""
        config = self.work / f"{len(self.rows)}.yaml"
        price = PRICE if checkout == ROOT else ""
        config.write_text(BASE_CONFIG % {"upstream": self.upstream, "price": price} + extra)
        authorization = None
        python = sys.executable
        tandem_python = python if checkout == ROOT else str(checkout / ".venv/bin/python")
        if "required: true" in extra:
            created = subprocess.run(
                [
                    *(tandem_python, "-m", "server.cli", "keys", "create", "--user", "bench"),
                    *("--config", str(config), "--json"),
                ],
                capture_output=True,
                check=True,
                cwd=checkout,
            )
            authorization = "Bearer " + orjson.loads(created.stdout)["key"]
        command = serve or [tandem_python, "-m", "server.cli", "serve"]
        command += ["--config", str(config), "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]
        proc, address, ready = self.procs.start(command, core=self.procs.server_core, cwd=checkout)
        row = Row(name, address, proc.pid, authorization, ready_s=ready)
        row.has_responses = checkout == ROOT
        self.rows.append(row)

    def on(self, usage: str = "", limits: str = "{backend: memory}", budget: bool = False) -> str:
        """ON_CONFIG: a SQLite ledger of the row's own unless `usage`, `limits`, and
        with `budget` a budget for each caller."""
        return ON_CONFIG % {
            "usage": usage or f"sqlite:///{self.work / f'usage{len(self.rows)}.db'}",
            "limits": limits,
            "budget": BUDGET if budget else "",
        }


def _litellm(args: argparse.Namespace, procs: Processes, work: Path, upstream: str) -> Row:
    """LiteLLM's proxy in a venv of its own (made on first use), one worker."""
    venv: Path = args.litellm_venv
    if not (venv / "bin" / "litellm").exists():
        print(f"installing {LITELLM} into {venv} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin/pip"), "install", "--quiet"]
        subprocess.run([*pip, LITELLM, *LITELLM_PROXY], check=True)
    config = work / "litellm.yaml"
    config.write_text(LITELLM_CONFIG % {"upstream": upstream})
    with socket.socket() as sock:  # a free port, for LiteLLM to take a moment later
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": LITELLM_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # its bundled prices: no network
        "LITELLM_TELEMETRY": "False",
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            *(str(venv / "bin/litellm"), "--config", str(config), "--host", "127.0.0.1"),
            *("--port", str(port), "--num_workers", "1"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=work,
    )
    procs.keep(proc)
    if procs.server_core is not None:
        os.sched_setaffinity(proc.pid, {procs.server_core})
    deadline = time.monotonic() + 120
    while True:
        try:
            if (
                httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=1).status_code
                == 200
            ):
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("LiteLLM did not start")
        time.sleep(0.2)
    for pid in _tree(proc.pid):
        if procs.server_core is not None:
            os.sched_setaffinity(pid, {procs.server_core})
    return Row(
        "LiteLLM (priced model)",
        {"http": f"127.0.0.1:{port}"},
        proc.pid,
        authorization=f"Bearer {LITELLM_KEY}",
        ready_s=time.perf_counter() - started,
    )


async def _drop_schema(dsn: str, schema: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


# --- one run ----------------------------------------------------------------------------


def measure(row: Row, figure: str, args: argparse.Namespace, procs: Processes, pool: Pool) -> None:
    stream = figure.endswith("stream")
    if figure.startswith("grpc"):
        job = (
            row.address["grpc"],
            stream,
            args.seconds,
            args.concurrency,
            args.words,
            row.grpc_metadata,
            procs.client_core,
        )
        before = cpu_s(row.pid)
        rps, count = pool.apply(_grpc_load, (job,))
    elif figure == "p50":
        seconds = max(args.seconds - 1, 1)  # a p50 settles sooner than a rate
        _, _, p50 = wrk(row, False, seconds, 1, args.words, procs.client_core)
        row.figures.setdefault(figure, []).append(p50)
        return
    else:
        before = cpu_s(row.pid)
        responses = figure == "responses"
        rps, count, _ = wrk(
            row,
            stream or responses,
            args.seconds,
            args.concurrency,
            args.words,
            procs.client_core,
            responses,
        )
    row.figures.setdefault(figure, []).append(rps)
    row.cpu_ms.setdefault(figure, []).append((cpu_s(row.pid) - before) * 1000 / max(count, 1))


def _cell(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}x"


def table(rows: list[Row]) -> str:
    upstream, bare = rows[0], rows[1]
    up_p50, bare_p50 = upstream.median("p50"), bare.median("p50")
    bare_added = None if up_p50 is None or bare_p50 is None else bare_p50 - up_p50
    lines = [
        "| | chat RPS | x bare | stream RPS | x bare | CPU ms/req chat, stream "
        "| p50 ms (added) | added x bare | gRPC unary | x bare | gRPC stream | x bare "
        "| RSS MiB | ready s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        p50 = row.median("p50")
        added = None if p50 is None or up_p50 is None else p50 - up_p50
        cpu = {f: statistics.median(v) for f, v in row.cpu_ms.items()}
        cells = [
            row.name,
            _cell(row.median("chat")),
            "-" if row is upstream else _ratio(row.median("chat"), bare.median("chat")),
            _cell(row.median("stream")),
            "-" if row is upstream else _ratio(row.median("stream"), bare.median("stream")),
            "-"
            if row is upstream
            else f"{_cell(cpu.get('chat'), '.2f')}, {_cell(cpu.get('stream'), '.2f')}",
            f"{_cell(p50, '.2f')}"
            + ("" if added is None or row is upstream else f" ({added:.2f})"),
            "-" if row is upstream else _ratio(added, bare_added),
            _cell(row.median("grpc-unary")),
            _ratio(row.median("grpc-unary"), bare.median("grpc-unary")),
            _cell(row.median("grpc-stream")),
            _ratio(row.median("grpc-stream"), bare.median("grpc-stream")),
            _cell(row.rss_mib, ".0f"),
            _cell(row.ready_s, ".2f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += _budget_costs(rows)
    for row in rows:
        if row.cpu_ms.get("responses"):
            cpu_ms = statistics.median(row.cpu_ms["responses"])
            lines.append(
                f"{row.name}, /v1/responses stream: {_cell(row.median('responses'))} RPS, "
                f"{cpu_ms:.2f} CPU ms/req"
            )
    return "\n".join(lines)


def _budget_costs(rows: list[Row]) -> list[str]:
    """Each budgets row beside its twin without budgets: RPS and CPU a request."""
    by_name = {row.name: row for row in rows}
    twins = (
        ("tandem, budgets", "tandem"),
        ("tandem, budgets, PostgreSQL", "tandem, PostgreSQL ledger"),
    )
    lines = []
    for name, twin_name in twins:
        row, twin = by_name.get(name), by_name.get(twin_name)
        if row is None or twin is None:
            continue
        for figure in ("chat", "stream", "grpc-unary"):
            if not row.cpu_ms.get(figure) or not twin.cpu_ms.get(figure):
                continue
            cpu, twin_cpu = (statistics.median(r.cpu_ms[figure]) for r in (row, twin))
            rps = _ratio(row.median(figure), twin.median(figure))
            lines.append(
                f"{name} vs {twin_name}, {figure}: RPS {rps}"
                f", CPU ms/req {cpu:.3f} vs {twin_cpu:.3f} (+{(cpu - twin_cpu) * 1000:.0f} us)"
            )
    return lines


def verdicts(rows: list[Row]) -> list[str]:
    """The issue's targets, each met or not, for the `tandem` row."""
    upstream, bare = rows[0], rows[1]
    tandem = next(r for r in rows if r.name == "tandem")
    litellm = next((r for r in rows if r.name.startswith("LiteLLM")), None)

    def ratio(row: Row, figure: str) -> float | None:
        value, base = row.median(figure), bare.median(figure)
        return None if value is None or not base else value / base

    checks: list[tuple[str, float | None, float, bool]] = [
        ("HTTP chat ≥ 0.8x bare", ratio(tandem, "chat"), 0.8, True),
        ("HTTP stream ≥ 1.0x bare", ratio(tandem, "stream"), 1.0, True),
    ]
    up, t, b = upstream.median("p50"), tandem.median("p50"), bare.median("p50")
    if up is not None and t is not None and b is not None and b > up:
        checks.append(("added p50 ≤ 1.3x bare's", (t - up) / (b - up), 1.3, False))
    checks += [
        ("gRPC unary ≥ 0.8x bare", ratio(tandem, "grpc-unary"), 0.8, True),
        ("gRPC stream ≥ 0.8x bare", ratio(tandem, "grpc-stream"), 0.8, True),
        ("RSS ≤ 100 MiB", tandem.rss_mib, 100, False),
        ("start to ready ≤ 1 s", tandem.ready_s, 1.0, False),
    ]
    if tandem.cpu_ms.get("responses") and tandem.cpu_ms.get("stream"):
        cpu = statistics.median(tandem.cpu_ms["responses"])
        checks.append(
            (
                "responses stream CPU ≤ 1.2x a chat stream's",
                cpu / statistics.median(tandem.cpu_ms["stream"]),
                1.2,
                False,
            )
        )
    if litellm is not None:
        for figure in ("chat", "stream"):
            value, base = tandem.median(figure), litellm.median(figure)
            checks.append(
                (
                    f"{figure} ≥ 30x LiteLLM",
                    None if not base or value is None else value / base,
                    30,
                    True,
                )
            )
    out = []
    for label, value, bound, at_least in checks:
        met = value is not None and (value >= bound if at_least else value <= bound)
        out.append(f"{'met ' if met else 'MISS'}  {label}: {_cell(value, '.3f')}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per figure, per row, per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--concurrency", type=int, default=16, help="connections (gRPC: calls) in flight"
    )
    parser.add_argument("--words", type=int, default=20, help="words per answer (chunks streamed)")
    parser.add_argument("--figures", default=",".join(FIGURES), help=f"of {','.join(FIGURES)}")
    parser.add_argument("--also", default="", help="more rows: redis,postgres,budgets,unguarded")
    parser.add_argument("--before", type=Path, help="also an earlier checkout in DIR (installed)")
    parser.add_argument("--litellm", action="store_true", help=f"also LiteLLM ({LITELLM})")
    parser.add_argument(
        "--litellm-venv", type=Path, default=ROOT / ".bench" / "litellm", help="made if missing"
    )
    parser.add_argument("--no-tracing", action="store_true", help="without the tracing row")
    parser.add_argument(
        "--redis", default=os.environ.get("TANDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TANDEM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args()
    figures = args.figures.split(",")
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"the bench needs {tool}: apt-get install wrk nginx")
    cores = sorted(os.sched_getaffinity(0))
    procs = Processes(*((cores[0], cores[1]) if len(cores) > 1 else (None, None)))
    started = time.perf_counter()
    with rows_started(args, procs) as rows, multiprocessing.get_context("spawn").Pool(1) as pool:
        print(
            f"servers on core {procs.server_core}, load and upstream on core {procs.client_core}; "
            f"{args.rounds} rounds x {args.seconds:g} s a figure, {args.concurrency} in flight, "
            f"{args.words} words",
            flush=True,
        )
        for row in rows:
            for stream in (False, True):
                check_http(row, stream, args.words)
            if row.has_grpc:
                asyncio.run(_check_grpc(row.address["grpc"], args.words, row.grpc_metadata))
            if row.has_responses and "responses" in figures:
                check_responses(row, args.words)
        for round_ in range(args.rounds):
            for figure in figures:
                for row in rows:
                    if figure.startswith("grpc") and not row.has_grpc:
                        continue
                    if figure == "responses" and not row.has_responses:
                        continue
                    measure(row, figure, args, procs, pool)
            print(
                f"round {round_ + 1} of {args.rounds} done ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        for row in rows:
            row.rss_mib = rss_mib(row.pid)
        print()
        print(table(rows))
        print()
        print("\n".join(verdicts(rows)))


if __name__ == "__main__":
    main()
