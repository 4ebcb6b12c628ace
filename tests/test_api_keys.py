"""API keys end to end: `tandem keys` (another process), then HTTP and gRPC, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.eventually import eventually
from tests.servers import TandemProcess, run_cli, start_tandem
from tests.stores import pg_schema_url

PG_DSN = os.environ.get("TANDEM_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
CONFIG = """
providers: [{name: demo, kind: mock}]
models: [{name: echo, provider: demo}, {name: premium, provider: demo}]
tiers:
  free: {default_model: echo, models: [echo], requests_per_minute: 2}
  standard: {default_model: premium}
auth: {required: true, key_cache_s: 0.5}
usage: {store: "%(store)s"}
"""


def keys(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("keys", *args, "--config", config, cwd=config.parent)


def create(config: Path, user: str, tier: str = "free") -> dict[str, Any]:
    done = keys(config, "create", "--user", user, "--tier", tier, "--json")
    assert done.returncode == 0, done.stderr
    created: dict[str, Any] = orjson.loads(done.stdout)
    return created


def chat(server: TandemProcess, key: str, **fields: Any) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}], **fields},
        headers={"authorization": f"Bearer {key}"},
    )


def grpc_code(server: TandemProcess, key: str) -> grpc.StatusCode:
    async def call() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(server.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            request = chat_pb2.ChatCompletionRequest(
                messages=[chat_pb2.ChatMessage(role="user", content="x")]
            )
            try:
                await stub.CreateChatCompletion(
                    request, metadata=(("authorization", f"Bearer {key}"),)
                )
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    return asyncio.run(call())


def refused_within(server: TandemProcess, key: str, seconds: float) -> float:
    started = time.monotonic()

    def refused() -> bool:
        return (
            chat(server, key).status_code == 403
            and grpc_code(server, key) == grpc.StatusCode.PERMISSION_DENIED
        )

    eventually(refused, seconds, what="the key refused on both doors")
    return time.monotonic() - started


def exercise(tmp_path: Path, store: str) -> None:
    config = tmp_path / "tandem.yaml"
    config.write_text(CONFIG % {"store": store})
    alice = create(config, "alice")
    bob = create(config, "bob", "standard")
    assert alice["key"].startswith("tdm_")
    assert alice["key"] != bob["key"]
    assert set(alice) == {  # the admin API's key, plus its secret (shown once)
        *("id", "key", "user", "tier", "models", "requests_per_minute", "tokens_per_minute"),
        *("max_concurrent_requests", "budget", "expires_at", "labels", "created_at", "revoked"),
    }
    first, second = (start_tandem(tmp_path, config.read_text()) for _ in range(2))
    try:
        assert chat(first, alice["key"]).json()["model"] == "echo"
        assert chat(second, bob["key"]).json()["model"] == "premium"  # tier standard's default
        assert chat(first, alice["key"], model="premium").status_code == 403  # outside tier free
        assert grpc_code(second, alice["key"]) == grpc.StatusCode.OK
        # alice's own budget on this replica (memory backend): 2 a minute, one spent above
        assert [chat(first, alice["key"]).status_code for _ in range(2)] == [200, 429]
        assert chat(first, bob["key"]).status_code == 200  # bob's is separate (and unlimited)
        forged = alice["key"][:-4] + "AAAA"
        assert chat(first, forged).status_code == 401
        assert chat(first, "tdm_000000000000_nothing").status_code == 401

        listed = orjson.loads(keys(config, "list", "--json").stdout)
        assert [(k["id"], k["user"], k["revoked"]) for k in listed] == [
            (alice["id"], "alice", False),
            (bob["id"], "bob", False),
        ]
        assert alice["key"] not in keys(config, "list").stdout

        assert chat(second, bob["key"]).status_code == 200  # cached on both replicas
        assert keys(config, "revoke", bob["id"]).returncode == 0
        for server in (first, second):
            assert refused_within(server, bob["key"], 3.0) < 0.5 + 1.0
        assert keys(config, "revoke", bob["id"]).returncode == 2  # already revoked
        assert orjson.loads(keys(config, "list", "--json").stdout)[1]["revoked"] is True
    finally:
        for server in (first, second):
            assert server.terminate() == 0


def test_keys_on_sqlite(tmp_path: Path) -> None:
    exercise(tmp_path, "sqlite:///keys.db")
    assert (tmp_path / "keys.db").exists()


@pytest.fixture
def pg_store() -> Iterator[str]:
    with pg_schema_url() as url:
        yield url


def test_keys_on_postgresql(tmp_path: Path, pg_store: str) -> None:
    exercise(tmp_path, pg_store)


def test_a_key_made_from_another_folder_works(tmp_path: Path) -> None:
    """`cd other && tandem keys create --config ../conf/tandem.yaml`: a relative SQLite
    store lies in the config file's folder, for `keys` and `serve` wherever they run."""
    conf, other = tmp_path / "conf", tmp_path / "other"
    conf.mkdir()
    other.mkdir()
    text = CONFIG % {"store": "sqlite:///keys.db"}
    (conf / "tandem.yaml").write_text(text)
    store = conf / "keys.db"
    done = run_cli(
        "keys", "create", "--user", "alice", "--json", "--config", "../conf/tandem.yaml", cwd=other
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(f"store: SQLite {store}\n")
    server = start_tandem(conf, text, cwd=other)  # its config in conf/, run from other/
    try:
        assert chat(server, orjson.loads(done.stdout)["key"]).status_code == 200
        assert f"store: SQLite {store}" in server.stderr()
    finally:
        assert server.terminate() == 0
    assert store.exists()
    assert not (other / "keys.db").exists()


def test_creating_a_key_for_a_missing_tier_fails(tmp_path: Path) -> None:
    config = tmp_path / "tandem.yaml"
    config.write_text(CONFIG % {"store": "sqlite:///keys.db"})
    done = keys(config, "create", "--user", "x", "--tier", "platinum")
    assert done.returncode == 2
    assert "tier 'platinum' does not exist" in done.stderr


def test_keys_on_an_unreachable_multi_host_postgresql_fail_in_one_line(tmp_path: Path) -> None:
    """asyncpg takes several hosts; neither answers here. The command names the store
    (no user, no password) and says why it failed, without a traceback."""
    config = tmp_path / "tandem.yaml"
    config.write_text(CONFIG % {"store": "postgresql://u:pw-0123@127.0.0.1:9,127.0.0.2:9/db"})
    done = keys(config, "list")
    assert done.returncode == 2
    store, failure = done.stderr.splitlines()
    assert store == "store: PostgreSQL postgresql://127.0.0.1:9,127.0.0.2:9/db"
    assert failure.startswith("tandem: cannot open the store: [Errno 111] Connect call failed")
