"""What scripts/load.py, soak.py and faults.py share: servers on cores, a work folder,
samples of a process, API keys, the ledger read back, the report table and verdict lines."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import NoReturn

import asyncpg
import httpx
import orjson
from bench import cpu_s, rss_mib

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
START_TIMEOUT_S = 60.0

__all__ = [
    "ROOT",
    "SCRIPTS",
    "Measured",
    "Sample",
    "Sampler",
    "Server",
    "compare_ledger",
    "conclude",
    "cores",
    "cpu_s",
    "create_key",
    "fd_count",
    "ledger",
    "percentile",
    "print_table",
    "python",
    "rss_mib",
    "run_delay_s",
    "serve",
    "shared_counter",
    "start_load_process",
    "verdict",
    "work_folder",
]


_counter: Synchronized[int] | None = None


def start_load_process(counter: Synchronized[int], core: int | None) -> None:
    """A load process's initializer: the counter it shares with its parent (a phase, the
    requests done), and the load's own core."""
    global _counter
    _counter = counter
    if core is not None:
        os.sched_setaffinity(0, {core})


def shared_counter() -> Synchronized[int]:
    """The counter `start_load_process` was given, in a load process."""
    assert _counter is not None, "not in a load process"
    return _counter


def cores() -> tuple[int | None, int | None]:
    """(the server's core, the load's core), or (None, None) on one core."""
    available = sorted(os.sched_getaffinity(0))
    return (available[0], available[1]) if len(available) > 1 else (None, None)


@dataclass
class Server:
    """A process that prints `http listening on ...` and `grpc listening on ...`."""

    proc: subprocess.Popen[bytes]
    address: dict[str, str]
    log: Path

    @classmethod
    def start(cls, command: list[str], *, core: int | None, log: Path) -> Server:
        with log.open("wb") as stderr:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT)
        if core is not None:
            os.sched_setaffinity(proc.pid, {core})
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(lines) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline().decode()
            if not line:
                break
            lines.append(line)
        if not all(" listening on " in line for line in lines) or len(lines) < 2:
            proc.kill()
            raise RuntimeError(f"{command[:4]} did not start: {log.read_text()[-2000:]}")
        address = dict(line.strip().split(" listening on ") for line in lines)
        return cls(proc, address, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        """http://HOST:PORT of its HTTP side."""
        return f"http://{self.address['http']}"

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (a drain: the ledger is flushed), then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def serve(config: Path, *, core: int | None, log: Path) -> Server:
    """`tandem serve` on `config` (HTTP and gRPC on free ports), once it is ready."""
    server = Server.start(
        [
            *(python(), "-m", "server.cli", "serve", "--config", str(config)),
            *("--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"),
        ],
        core=core,
        log=log,
    )
    try:
        wait_ready(server.base)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def work_folder(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary folder (logs, config, ledger), removed at the end unless `keep`."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_delay_s(pid: int) -> float:
    """Seconds the threads of `pid` waited for a CPU while runnable (schedstat): what a
    busy machine takes from the server, apart from what the server spends."""
    total = 0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for thread in threads:
        try:
            total += int(Path(f"/proc/{pid}/task/{thread}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def established(ports: frozenset[int]) -> int:
    """TCP connections established to a local port in `ports` (the server's side of
    each: one descriptor in the server apiece)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) in ports:
                count += 1
    return count


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Sample:
    at_s: float
    rss_mib: float
    fds: int
    cpu_s: float
    progress: int
    waited_s: float
    connections: int  # clients' connections to the server, established

    @property
    def own_fds(self) -> int:
        """Descriptors beyond one per client connection: what a leak would raise."""
        return self.fds - self.connections


@dataclass
class Sampler:
    """RSS, open descriptors and CPU of `pid` every `every_s`, from a thread, each with
    the load's progress (a shared counter the load client advances)."""

    pid: int
    every_s: float = 0.25
    progress: Callable[[], int] | None = None
    ports: frozenset[int] = frozenset()  # the server's: its clients' connections are counted
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def take(self, progress: int = 0) -> Sample:
        sample = Sample(
            time.monotonic() - self._started,
            rss_mib(self.pid),
            fd_count(self.pid),
            cpu_s(self.pid),
            progress,
            run_delay_s(self.pid),
            established(self.ports) if self.ports else 0,
        )
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.take(self.progress() if self.progress is not None else 0)

    def peak_rss(self) -> float:
        return max((s.rss_mib for s in self.samples), default=0.0)

    def busiest_s(self, window_s: float = 1.0) -> tuple[float, float]:
        """(CPU, runqueue wait) as fractions of a core, over the busiest `window_s`."""
        best = (0.0, 0.0)
        for i, first in enumerate(self.samples):
            for last in self.samples[i + 1 :]:
                if last.at_s - first.at_s >= window_s:
                    span = last.at_s - first.at_s
                    used = (last.cpu_s - first.cpu_s) / span
                    if used > best[0]:
                        best = (used, (last.waited_s - first.waited_s) / span)
                    break
        return best


@dataclass
class Measured:
    """What a run saw of the server: samples before the load, at its end and once it had
    settled; its exit code on SIGTERM; the run's records in the ledger."""

    sampler: Sampler
    idle: Sample
    ended: Sample
    after: Sample
    exit_code: int
    records: list[tuple[str, str]]


def create_key(python: str, config: Path, user: str, tier: str) -> tuple[str, str]:
    """(key id, key) from `tandem keys create`, as an operator makes one."""
    out = subprocess.run(
        [
            *(python, "-m", "server.cli", "keys", "create", "--user", user, "--tier", tier),
            *("--config", str(config), "--json"),
        ],
        capture_output=True,
        check=True,
        cwd=ROOT,
    ).stdout
    created = orjson.loads(out)
    return created["id"], created["key"]


async def _pg_rows(dsn: str, prefix: str) -> list[tuple[str, str]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT request_id, status FROM usage_records WHERE request_id LIKE $1", prefix + "%"
        )
        return [(row[0], row[1]) for row in rows]
    finally:
        await connection.close()


def ledger(store: str, prefix: str) -> list[tuple[str, str]]:
    """(request id, status) of every ledger record whose request id starts with `prefix`."""
    if store.startswith("sqlite:///"):
        connection = sqlite3.connect(store.removeprefix("sqlite:///"))
        try:
            query = "SELECT request_id, status FROM usage_records WHERE request_id LIKE ?"
            return [(r[0], r[1]) for r in connection.execute(query, (prefix + "%",))]
        finally:
            connection.close()
    return asyncio.run(_pg_rows(store, prefix))


def compare_ledger(
    expected: Mapping[str, str | None],
    records: Iterable[tuple[str, str]],
    unknown: Iterable[str] = (),
) -> tuple[list[str], Counter[str]]:
    """Problems (at most 10 named, then a count) between what the load expects of each
    request id (a status, or None: no record) and the ledger; and the statuses seen."""
    seen: dict[str, list[str]] = {}
    for request_id, status in records:
        seen.setdefault(request_id, []).append(status)
    problems: list[str] = []
    statuses: Counter[str] = Counter()
    for request_id in unknown:  # failed requests: a record or none may be right
        statuses.update(seen.pop(request_id, []))
    for request_id, want in expected.items():
        got = seen.pop(request_id, [])
        statuses.update(got)
        if want is None and got:
            problems.append(f"{request_id}: expected no record, found {got}")
        elif want is not None and got != [want]:
            problems.append(f"{request_id}: expected one {want!r} record, found {got}")
    for request_id, got in seen.items():
        problems.append(f"{request_id}: not sent, yet recorded {got}")
    if len(problems) > 10:
        problems = [*problems[:10], f"... and {len(problems) - 10} more"]
    return problems, statuses


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def verdict(label: str, met: bool, detail: str = "") -> str:
    return f"{'PASS' if met else 'MISS'}  {label}{': ' + detail if detail else ''}"


def print_table(title: str, rows: Iterable[tuple[str, str]]) -> None:
    """The report: a blank line, then a two-column markdown table."""
    print()
    print(f"| {title} | |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def conclude(lines: list[str]) -> NoReturn:
    """Print the verdict lines; exit 0 when every one is a PASS, else 1."""
    print("\n".join(lines))
    print("(figures taken on a shared machine are indicative only)")
    raise SystemExit(0 if all(line.startswith("PASS") for line in lines) else 1)


def python() -> str:
    return sys.executable


def wait_ready(base: str) -> None:
    """Until `base` answers /readyz 200 (30 s at most)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server never became ready")
