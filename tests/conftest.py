from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import hypothesis.core
import openai
import pytest
from hypothesis.internal.conjecture import engine
from hypothesis.strategies._internal import collections

from tests.fake_upstream import FakeUpstream
from tests.fuzzing import FuzzCases
from tests.servers import TandemProcess, start_tandem
from tests.stores import PG_DSN, pg_schema_url
from tests.tcp_proxy import TcpProxy, proxy_to

# Coding agents' own CLIs (Codex from npm) run under `make test-agents`, not `make test`.
collect_ignore = ["agents"]

# schemathesis' first import swaps, process-wide, Hypothesis' printer of failing
# examples for one that prints nothing, and grows its buffer: every suite gets
# Hypothesis as shipped back once collection has imported it (its plugin is off).
_HYPOTHESIS_AS_SHIPPED = tuple(
    (module, name, getattr(module, name))
    for module, name in (
        (hypothesis.core, "RepresentationPrinter"),
        (hypothesis.core, "BUFFER_SIZE"),
        (engine, "BUFFER_SIZE"),
        (collections, "BUFFER_SIZE"),
    )
)


def pytest_collection_finish(session: pytest.Session) -> None:
    for module, name, value in _HYPOTHESIS_AS_SHIPPED:
        setattr(module, name, value)


# A config most gRPC tests share: a fast and a slow mock, a model outside tier free, and one
# with a price.
SHARED_CONFIG = """
server: {max_body_bytes: 65536}
providers:
  - {name: demo, kind: mock}
  - {name: slow, kind: mock, chunk_delay_ms: 100}
models:
  - {name: echo, provider: demo}
  - {name: slow-echo, provider: slow}
  - {name: private, provider: demo}
  - {name: org/echo-2, provider: demo, price: {input_per_mtok: 0.15, output_per_mtok: "0.6"}}
tiers:
  free: {default_model: echo, models: [echo, slow-echo, org/echo-2]}
"""


@pytest.fixture
def tandem(tmp_path: Path) -> Iterator[Callable[..., TandemProcess]]:
    """Start `tandem serve` processes; every one is stopped after the test."""
    started: list[TandemProcess] = []

    def start(config: str | None = None, **kwargs: object) -> TandemProcess:
        process = start_tandem(tmp_path, config, **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TandemProcess]:
    process = start_tandem(tmp_path_factory.mktemp("shared"), SHARED_CONFIG)
    yield process
    assert process.terminate() == 0, process.stderr()


@pytest.fixture
async def channel(shared_server: TandemProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(shared_server.grpc) as channel:
        yield channel


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    """A fake OpenAI/Anthropic/Ollama upstream on 127.0.0.1:0, shared by a module."""
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def gateway(
    request: pytest.FixtureRequest, fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    """`tandem serve` on the test module's `CONFIG`, over the module's `fake` upstream
    (`FakeUpstream.filled`); a module that needs another gateway defines its own."""
    name = request.module.__name__.rpartition(".")[2]
    process = start_tandem(tmp_path_factory.mktemp(name), fake.filled(request.module.CONFIG))
    yield process
    assert process.terminate() == 0, process.stderr()


@pytest.fixture
def client(gateway: TandemProcess, fake: FakeUpstream) -> Iterator[Any]:
    """The official SDK on the module's `gateway`, typed loosely (its overloads
    fight the dict literals of tests), with the fake's script and records reset."""
    fake.reset()
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="caller", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A proxy in front of the local PostgreSQL, for tests where it goes away."""
    with proxy_to(PG_DSN, 5432) as proxy:
        yield proxy


@pytest.fixture
def proxied_pg(proxy: TcpProxy) -> Iterator[tuple[str, str]]:
    """(direct, through the proxy): two `usage.store` URLs of one fresh schema."""
    target = urlsplit(PG_DSN)
    userinfo, at, _ = target.netloc.rpartition("@")
    through = target._replace(netloc=f"{userinfo}{at}127.0.0.1:{proxy.port}")
    with pg_schema_url() as direct:
        yield direct, through.geturl() + direct[len(PG_DSN) :]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A `usage.store` URL: a fresh SQLite file, then a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'usage.db'}"
    else:
        with pg_schema_url() as url:
            yield url


_FUZZ_CASES = pytest.StashKey[FuzzCases]()


@pytest.fixture(scope="session")
def fuzz_cases(pytestconfig: pytest.Config) -> FuzzCases:
    """Examples run per fuzz suite, for the terminal summary."""
    return pytestconfig.stash.setdefault(_FUZZ_CASES, FuzzCases())


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under pytest-xdist (`make test`), a worker hands its fuzz counts to the controller."""
    workeroutput = getattr(session.config, "workeroutput", None)
    cases = session.config.stash.get(_FUZZ_CASES, None)
    if workeroutput is not None and cases:
        workeroutput["fuzz_cases"] = dict(cases)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """The controller adds up its workers' fuzz counts (xdist's hook)."""
    counted = getattr(node, "workeroutput", {}).get("fuzz_cases")
    if counted:
        node.config.stash.setdefault(_FUZZ_CASES, FuzzCases()).update(counted)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    cases = config.stash.get(_FUZZ_CASES, None)
    if cases:
        terminalreporter.write_sep("-", "fuzz cases run per suite")
        for suite, count in sorted(cases.items()):
            terminalreporter.write_line(f"{suite}: {count}")
