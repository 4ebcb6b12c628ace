"""`tandem serve --workers N`: N copies of the gateway sharing both ports (SO_REUSEPORT).

The parent starts the workers, prints the two listening lines once every
worker accepts, forwards SIGTERM/SIGINT to them (each drains as one gateway
does) and exits 0 when they all did. It gives them one empty
`PROMETHEUS_MULTIPROC_DIR` (the operator's, emptied, or a temporary one),
so that a scrape on any worker shows every worker's figures, its own pid
(`TANDEM_WORKERS_PARENT`), by which a worker tells its fellow workers, and a key
they seal reasoning with when there is no store to keep one
(`TANDEM_WORKERS_SEAL_KEY`, server/translate/responses/seal.py). A worker
that dies stops the others (exit 1); a parent that dies takes its workers with
it (PR_SET_PDEATHSIG).
Port 0 needs one worker: N processes cannot agree on a port the kernel picks.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from server.telemetry.metrics import MULTIPROC_ENV, empty_multiprocess_directory
from server.telemetry.processes import WORKERS_PARENT_ENV
from server.translate.responses.seal import WORKERS_SEAL_ENV

__all__ = ["run_workers"]

logger = logging.getLogger("tandem")

START_TIMEOUT_S = 30.0
PR_SET_PDEATHSIG = 1


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


def _die_with_parent() -> None:
    """In a worker, before exec: SIGTERM when the parent dies, so no worker is orphaned."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_workers(config: str | None, http: str, grpc: str, workers: int, *, log_format: str) -> int:
    prepared = empty_multiprocess_directory(make=True)
    assert prepared is not None
    directory, owned = prepared
    try:
        return _run(config, http, grpc, workers, log_format, directory)
    finally:
        if owned:
            shutil.rmtree(directory, ignore_errors=True)


def _run(
    config: str | None, http: str, grpc: str, workers: int, log_format: str, metrics: Path
) -> int:
    command = [sys.executable, "-m", "server.cli", "serve", "--http", http, "--grpc", grpc]
    command += ["--workers", str(workers), "--worker", "--log-format", log_format]
    if config is not None:
        command += ["--config", config]
    env = {**os.environ, MULTIPROC_ENV: str(metrics), WORKERS_PARENT_ENV: str(os.getpid())}
    # without a store to keep one, the workers' reasoning seal is one key they share
    env[WORKERS_SEAL_ENV] = secrets.token_hex(32)
    children = [
        subprocess.Popen(command, stdout=subprocess.PIPE, env=env, preexec_fn=_die_with_parent)
        for _ in range(workers)
    ]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        started = [_read_lines(child, 2, deadline) for child in children]  # every worker accepts
    except OSError as exc:
        stop(signal.SIGTERM, None)
        codes = [child.wait() for child in children]
        if stopping and all(code == 0 for code in codes):
            return 0  # asked to stop while starting: drained
        logger.error("tandem: %s", exc)
        return 2
    sys.stdout.write("\n".join(started[0]) + "\n")
    sys.stdout.flush()
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.1)
    if not stopping:  # a worker died: the others stop too, rather than serve short-handed
        logger.error("tandem: a worker exited; stopping the others")
        stop(signal.SIGTERM, None)
        for child in children:
            child.wait()
        return 1
    codes = [child.wait() for child in children]
    return 0 if all(code == 0 for code in codes) else 1
