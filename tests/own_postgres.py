"""A PostgreSQL server of a test's own (Debian's binaries, a fresh cluster in a temporary
directory, a free port): stopped like a crash and started again at will, without
disturbing the machine's shared PostgreSQL."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.served import Served

__all__ = ["OwnPostgres", "postgres_binaries"]


def postgres_binaries() -> Path | None:
    """The folder holding `initdb` and `pg_ctl` (the newest installed), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OwnPostgres(Served):
    """`initdb` once (`start`), then `crash` (an immediate stop: no shutdown checkpoint,
    connections cut) and `restart` on the same data and port. PostgreSQL refuses to run
    as root: as root, its commands run as the `postgres` user, in a directory it owns."""

    def __init__(self) -> None:
        binaries = postgres_binaries()
        assert binaries is not None, "no PostgreSQL binaries under /usr/lib/postgresql"
        self._bin = binaries
        self.port = _free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="tandem-pg-"))
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self._as, str(self._bin / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def start(self) -> None:
        data = str(self._dir / "data")
        self._run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync")
        self.restart()

    def restart(self) -> None:
        options = (
            f"-p {self.port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=40"
        )
        log = str(self._dir / "log")
        self._run("pg_ctl", "-D", str(self._dir / "data"), "-o", options, "-l", log, "-w", "start")
        self._running = True

    def crash(self) -> None:
        """Stop at once, as a crash would (every connection cut, recovery at restart)."""
        self._run("pg_ctl", "-D", str(self._dir / "data"), "-m", "immediate", "-w", "stop")
        self._running = False

    def stop(self) -> None:
        try:
            if self._running:
                self.crash()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
