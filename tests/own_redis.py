"""A redis-server process of a test's own, on a free port: paused, stopped and restarted
at will, without disturbing the machine's shared Redis."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import redis

from tests.eventually import eventually
from tests.served import Served

__all__ = ["OwnRedis"]

START_TIMEOUT_S = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OwnRedis(Served):
    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self._directory)]
        self._proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc = self._proc
        with self.client() as client:

            def answers() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError("redis-server exited")
                try:
                    return bool(client.ping())
                except redis.ConnectionError as error:
                    raise AssertionError(f"redis-server did not answer: {error}") from error

            eventually(answers, START_TIMEOUT_S)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections hang, as under CLIENT PAUSE."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.kill()
            self._proc.wait()
            self._proc = None
