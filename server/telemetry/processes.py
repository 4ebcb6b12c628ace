"""The `process_*` series of `/metrics`: one series each, without labels, whether one
process serves or N workers do (CONTRACT: "summed over workers").

Memory, CPU time and open file descriptors are summed over the live workers;
the start time is the earliest worker's. `process_max_fds` is the limit of the
process answering the scrape: a limit is per process and does not add up, and
every worker inherits the parent's.

The workers are the processes with value files in the multiprocess directory
(prometheus-client names them `..._<pid>.db`) whose parent is still the one
that started this worker (`WORKERS_PARENT_ENV`, set by server/workers.py): a
worker gone since, a zombie, or an unrelated process that got a dead worker's
pid is not counted. Read from `/proc` at the scrape, never on a request's path.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = ["WORKERS_PARENT_ENV", "ProcessSeries"]

WORKERS_PARENT_ENV = "TANDEM_WORKERS_PARENT"  # in a worker: the pid of the parent

_HELP = {
    "process_resident_memory_bytes": "Resident memory size in bytes, summed over the workers",
    "process_virtual_memory_bytes": "Virtual memory size in bytes, summed over the workers",
    "process_cpu_seconds": "User and system CPU time in seconds, summed over the workers",
    "process_open_fds": "Open file descriptors, summed over the workers",
    "process_max_fds": "Maximum number of open file descriptors of one worker",
    "process_start_time_seconds": "Start of the earliest worker, in seconds since the Unix epoch",
}
_COUNTERS = frozenset(("process_cpu_seconds",))
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = resource.getpagesize()


@dataclass(frozen=True)
class _Figures:
    resident: float
    virtual: float
    cpu_s: float
    started_ticks: float
    open_fds: int


def _read(pid: int, parent: int | None) -> _Figures | None:
    """A process's figures from /proc; None when it is gone, a zombie, or (with
    `parent`) not a child of `parent`."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # after the command's ")": state, ppid, ... (proc(5), from field 3 on)
            fields = stat.read().rpartition(b")")[2].split()
        if fields[0] in (b"Z", b"X") or (parent is not None and int(fields[1]) != parent):
            return None
        open_fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    return _Figures(
        resident=float(fields[21]) * _PAGE,
        virtual=float(fields[20]),
        cpu_s=(float(fields[11]) + float(fields[12])) / _TICKS,
        started_ticks=float(fields[19]),
        open_fds=open_fds,
    )


def _boot_time() -> float:
    with open("/proc/stat", "rb") as stat:
        return next(float(line.split()[1]) for line in stat if line.startswith(b"btime "))


class ProcessSeries(Collector):
    """`directory`: the multiprocess directory, None for a process without workers."""

    def __init__(self, directory: Path | None) -> None:
        parent = os.environ.get(WORKERS_PARENT_ENV)
        self._workers = (directory, int(parent)) if directory and parent else None
        self._boot: float | None
        try:
            self._boot = _boot_time()
        except OSError:  # no /proc: no process series
            self._boot = None

    def _candidates(self) -> Iterator[tuple[int, int | None]]:
        """(pid, the parent it must have): this process, then its fellow workers."""
        me = os.getpid()
        yield me, None
        if self._workers is not None:
            directory, parent = self._workers
            pids = {path.stem.rpartition("_")[2] for path in directory.glob("*.db")}
            yield from ((int(p), parent) for p in pids if p.isdigit() and int(p) != me)

    def collect(self) -> Iterable[Metric]:
        if self._boot is None:
            return []
        alive = [f for f in (_read(pid, parent) for pid, parent in self._candidates()) if f]
        if not alive:
            return []
        max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        started = self._boot + min(f.started_ticks for f in alive) / _TICKS
        values = {
            "process_resident_memory_bytes": sum(f.resident for f in alive),
            "process_virtual_memory_bytes": sum(f.virtual for f in alive),
            "process_cpu_seconds": sum(f.cpu_s for f in alive),
            "process_open_fds": sum(f.open_fds for f in alive),
            "process_max_fds": max_fds,
            "process_start_time_seconds": started,
        }
        return [
            (CounterMetricFamily if name in _COUNTERS else GaugeMetricFamily)(
                name, _HELP[name], value=value
            )
            for name, value in values.items()
        ]
