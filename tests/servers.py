"""Real `tandem serve` processes on port 0 for tests."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from tandem.v1 import chat_pb2, chat_pb2_grpc

from tests.eventually import eventually

__all__ = [
    "ServeResult",
    "TandemProcess",
    "children_of",
    "grpc_chat_failure",
    "run_cli",
    "run_serve",
    "serve_command",
    "start_tandem",
    "streamed_over_grpc",
    "streamed_over_sdk",
    "usage_records",
]

START_TIMEOUT_S = 20.0
LOG_FLUSH_S = 0.15  # three of the log thread's intervals


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TANDEM_OPENAI"))}
    env.update(extra or {})
    return env


@dataclass
class TandemProcess:
    proc: subprocess.Popen[bytes]
    http: str
    grpc: str
    stderr_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.http}"

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def settled_stderr(self) -> str:
        """stderr once what was logged so far has been written: log lines leave from a
        thread every 50 ms (server/telemetry/logs.py), so a check that nothing was
        logged waits for them."""
        time.sleep(LOG_FLUSH_S)
        return self.stderr()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def children_of(pid: int) -> list[int]:
    """The processes `pid` started (a `serve --workers N` parent's workers)."""
    done = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split()]


def run_cli(
    *args: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`tandem ARGS...` (`keys create ...`, `chat ...`) in a process of its own, as an
    operator runs it, from `cwd`; its exit code is the caller's to check."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(env),
        cwd=cwd,
        timeout=60,
        check=False,
    )


def serve_command(config: Path | None, args: list[str]) -> list[str]:
    command = [sys.executable, "-m", "server.cli", "serve"]
    if config is not None:
        command += ["--config", str(config)]
    return command + args


def start_tandem(
    tmp_path: Path,
    config: str | None = None,
    *,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> TandemProcess:
    """Start `tandem serve` on port 0 and wait for its two listening lines; the config
    is written into `tmp_path`, where it runs unless `cwd` says otherwise."""
    config_path = None
    if config is not None:
        config_path = tmp_path / f"tandem-{time.monotonic_ns()}.yaml"
        config_path.write_text(config)
    stderr_path = tmp_path / f"tandem-{time.monotonic_ns()}.log"
    args = args if args is not None else ["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            serve_command(config_path, args),
            stdout=subprocess.PIPE,
            stderr=stderr,
            bufsize=0,
            env=_env(env),
            cwd=cwd or tmp_path,
        )
    assert proc.stdout is not None
    addresses: dict[str, str] = {}
    buffer = b""
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(addresses) < 2:
        ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
        data = os.read(proc.stdout.fileno(), 4096) if ready else b""
        if not data:
            proc.kill()
            proc.wait()
            proc.stdout.close()
            raise RuntimeError(f"tandem serve did not start:\n{stderr_path.read_text()}")
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            door, _, address = line.decode().strip().partition(" listening on ")
            addresses[door] = address
    return TandemProcess(proc, addresses["http"], addresses["grpc"], stderr_path)


@dataclass
class ServeResult:
    returncode: int
    stdout: str
    stderr: str


def run_serve(
    tmp_path: Path,
    config: str | None,
    *,
    env: dict[str, str] | None = None,
    config_path: Path | None = None,
    args: Sequence[str] = (),
) -> ServeResult:
    """Run `tandem serve ARGS` on port 0 expecting it to refuse to start."""
    if config is not None:
        config_path = tmp_path / "tandem.yaml"
        config_path.write_text(config)
    ports = ["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]
    done = subprocess.run(
        serve_command(config_path, [*args, *ports]),
        capture_output=True,
        text=True,
        env=_env(env),
        cwd=tmp_path,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    return ServeResult(done.returncode, done.stdout, done.stderr)


def usage_records(
    server: TandemProcess, count: int, credential: str | None = None, **params: Any
) -> list[dict[str, Any]]:
    """The records `GET /native/v1/usage` shows (newest first, `params` its filters) once
    `count` are written, which is all there are: the batcher writes them a moment after
    the call."""
    headers = {} if credential is None else {"authorization": f"Bearer {credential}"}

    def written() -> list[dict[str, Any]]:
        answer = httpx.get(f"{server.base_url}/native/v1/usage", params=params, headers=headers)
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()["records"]
        assert len(found) >= count, f"{len(found)} of {count} records written"
        return found

    found = eventually(written, what=f"{count} usage records")
    assert len(found) == count, found
    return found


def streamed_over_grpc(
    server: TandemProcess, text: str, metadata: tuple[tuple[str, str], ...] = ()
) -> list[chat_pb2.ChatCompletionChunk]:
    """The chunks of a chat of one user message, streamed over a fresh gRPC channel."""
    request = chat_pb2.ChatCompletionRequest(
        messages=[chat_pb2.ChatMessage(role="user", content=text)]
    )

    async def stream() -> list[chat_pb2.ChatCompletionChunk]:
        async with grpc.aio.insecure_channel(server.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            return [c async for c in stub.StreamChatCompletion(request, metadata=metadata)]

    return asyncio.run(stream())


def streamed_over_sdk(client: Any, model: str, text: str, **fields: Any) -> list[Any]:
    """The chunks of a chat of one user message streamed through the official `openai`
    SDK's `client`, the usage chunk asked for; `fields`, more of the request."""
    return list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": text}],
            stream=True,
            stream_options={"include_usage": True},
            **fields,
        )
    )


def grpc_chat_failure(
    server: TandemProcess,
    model: str,
    text: str,
    *,
    stream: bool = True,
    timeout: float | None = None,
) -> grpc.StatusCode:
    """The status a chat of one user message, streamed or whole, fails with over a fresh
    gRPC channel (a call that succeeds fails the test)."""
    request = chat_pb2.ChatCompletionRequest(
        model=model, messages=[chat_pb2.ChatMessage(role="user", content=text)]
    )

    async def call() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(server.grpc) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            try:
                if stream:
                    async for _ in stub.StreamChatCompletion(request, timeout=timeout):
                        pass
                else:
                    await stub.CreateChatCompletion(request, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                return error.code()
        raise AssertionError(f"the call of {model!r} succeeded")

    return asyncio.run(call())


def read_until_closed(conn: socket.socket, timeout_s: float = 20.0) -> bytes:
    """Everything a raw connection receives until the server closes it."""
    conn.settimeout(timeout_s)
    parts = []
    while chunk := conn.recv(65536):
        parts.append(chunk)
    return b"".join(parts)
