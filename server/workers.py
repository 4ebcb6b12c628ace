"""`tandem serve --workers N`: N copies of the gateway sharing both ports (SO_REUSEPORT).

The parent starts the workers, prints the two listening lines once every
worker accepts, forwards SIGTERM/SIGINT to them (each drains as one gateway
does) and exits 0 when they all did. Port 0 needs one worker: N processes
cannot agree on a port the kernel picks.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from types import FrameType

__all__ = ["run_workers"]

START_TIMEOUT_S = 30.0


def _read_lines(child: subprocess.Popen[bytes], count: int, deadline: float) -> list[str]:
    """The first `count` lines a worker prints, read from the raw pipe (a buffered
    readline would hide a second line from select)."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    buffer = b""
    while buffer.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        data = os.read(fd, 4096) if ready else b""
        if not data:
            raise OSError("a worker did not start")
        buffer += data
    return buffer.decode().splitlines()[:count]


def run_workers(config: str | None, http: str, grpc: str, workers: int) -> int:
    command = [sys.executable, "-m", "server.cli", "serve", "--http", http, "--grpc", grpc]
    command += ["--workers", str(workers), "--worker"]
    if config is not None:
        command += ["--config", config]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE) for _ in range(workers)]

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        started = [_read_lines(child, 2, deadline) for child in children]  # every worker accepts
    except OSError as exc:
        forward(signal.SIGTERM, None)
        for child in children:
            child.wait()
        sys.stderr.write(f"tandem: {exc}\n")
        return 2
    sys.stdout.write("\n".join(started[0]) + "\n")
    sys.stdout.flush()
    codes = [child.wait() for child in children]
    return 0 if all(code == 0 for code in codes) else 1
