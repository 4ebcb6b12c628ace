"""`tandem serve --workers N`: N gateways on the same ports, one SIGTERM for all."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.eventually import eventually
from tests.servers import TandemProcess, children_of, run_serve

CONFIG = """
providers: [{name: demo, kind: mock}]
models: [{name: echo, provider: demo}]
tiers:
  free: {default_model: echo, requests_per_minute: 4}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_workers_share_the_ports_and_drain_together(
    tandem: Callable[..., TandemProcess],
) -> None:
    http, grpc = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    server = tandem(CONFIG, args=["--workers", "2", "--http", http, "--grpc", grpc])
    assert (server.http, server.grpc) == (http, grpc)
    workers = children_of(server.proc.pid)
    assert len(workers) == 2
    statuses = []
    for _ in range(12):  # a new connection each time, so the kernel spreads them
        with httpx.Client(base_url=server.base_url) as client:
            statuses.append(
                client.post(
                    "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
                ).status_code
            )
    admitted = statuses.count(200)
    assert set(statuses) <= {200, 429}
    assert 2 <= admitted <= 4  # memory backend: each worker has 1/2 of the 4 a minute
    assert server.terminate() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert "gives each worker 1/2 of every budget" in server.stderr()


def test_port_zero_needs_a_single_worker(tmp_path: Path) -> None:
    done = run_serve(tmp_path, CONFIG, args=["--workers", "2"])  # on port 0
    assert done.returncode == 2
    assert "port 0 needs a single worker" in done.stderr


def test_a_dead_worker_stops_the_rest(tandem: Callable[..., TandemProcess]) -> None:
    http, grpc = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    server = tandem(CONFIG, args=["--workers", "2", "--http", http, "--grpc", grpc])
    first, second = children_of(server.proc.pid)
    os.kill(first, signal.SIGKILL)
    assert server.proc.wait(30) == 1
    assert (
        not Path(f"/proc/{second}").exists()
        or b"zombie" in Path(f"/proc/{second}/status").read_bytes().lower()
    )


def test_workers_die_with_their_parent(tandem: Callable[..., TandemProcess]) -> None:
    http, grpc = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    server = tandem(CONFIG, args=["--workers", "2", "--http", http, "--grpc", grpc])
    workers = children_of(server.proc.pid)
    server.proc.kill()
    server.proc.wait()
    eventually(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 30)
