"""`make soak`: 100,000 requests over every door; RSS and descriptors must stay flat.

One `tandem serve` worker on the first core (auth by API key, memory rate
limits with a generous tier, the SQLite ledger, metrics and the access log
on), the mock provider behind it; the load (scripts/doors.py: gRPC unary and
stream, `/native/v1`, `/v1` chat, stream, completions, embeddings and models,
`/api/chat` and `/api/generate` whole and NDJSON, `/v1/messages` whole and
streamed; every 10th stream of a door cancelled after its first chunk) on
the second. The worker's RSS and open descriptors are sampled every second.

PASS when every request answers, RSS and descriptors grow less than 5 %
from the warm-up (the first 10 % of the requests) to the end, and the ledger
has exactly one record per request id sent (`ok`, or `cancelled` for those
cut), none for a listing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import scale_kit as kit
import uvloop
from doors import Tally, Traffic, served

CONFIG = """
providers:
  - {name: demo, kind: mock}
  - {name: slow, kind: mock, chunk_delay_ms: 25}
models:
  - {name: echo, provider: demo}
  - {name: slow, provider: slow}
auth: {required: true}
rate_limits: {backend: memory}
usage: {store: "%(usage)s"}
tiers:
  free: {default_model: echo, requests_per_minute: 100000000, tokens_per_minute: 1000000000}
"""

# descriptors are counted apart from client connections by reading /proc/net/tcp, a
# moment apart from /proc/PID/fd: a connection accepted or closed between the two
# reads is off by one, so a couple of descriptors is the count's resolution
FD_RESOLUTION = 2


def _advance() -> None:
    progress = kit.shared_counter()
    with progress.get_lock():
        progress.value += 1


def _client(job: tuple[str, str, str, list[str], int, int]) -> Tally:
    base, grpc_target, run, keys, requests, concurrency = job
    doors, _ = served(base)
    traffic = Traffic(base, grpc_target, run, keys, doors, done=_advance)
    uvloop.run(traffic.drive(requests, concurrency))
    return traffic.tally


def growth(
    samples: list[kit.Sample], total: int, figure: str, warmup: float
) -> tuple[float, float, float]:
    """(after warm-up, at the end, growth) of `figure` while the load ran: its median
    over the tenth of the requests after the warm-up, and over the last tenth (a
    median, as descriptors come and go with the client's connections)."""
    running = [s for s in samples if s.progress < total] or samples

    def typical(low: float, high: float) -> float:
        values = [getattr(s, figure) for s in running if low * total <= s.progress <= high * total]
        later = [getattr(s, figure) for s in running if s.progress >= low * total]
        return float(statistics.median(values or later[:1] or [getattr(running[-1], figure)]))

    warm, end = typical(warmup, warmup + 0.1), typical(0.9, 1.0)
    return warm, end, (end / warm - 1) if warm else float("nan")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--warmup", type=float, default=0.25, help="the fraction of the requests not judged"
    )
    parser.add_argument("--growth", type=float, default=0.05, help="RSS and fds, after warm-up")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, ledger)")
    return parser.parse_args()


@dataclass
class _Ran(kit.Measured):
    """What a run measured, read once the server has stopped."""

    traffic: Tally


def _run(args: argparse.Namespace, work: Path) -> _Ran:
    """tandem started, the requests sent over every door, the server stopped."""
    run = f"soak-{os.getpid()}-"
    server_core, client_core = kit.cores()
    usage = f"sqlite:///{work / 'usage.db'}"
    progress: Synchronized[int] = multiprocessing.get_context("spawn").Value("q", 0)
    started = time.monotonic()
    config = work / "tandem.yaml"
    config.write_text(CONFIG % {"usage": usage})
    keys = [kit.create_key(kit.python(), config, f"soak{i}", "free")[1] for i in range(4)]
    with kit.serve(config, core=server_core, log=work / "tandem.log") as server:
        _, missing = served(server.base)
        if missing:
            print(f"not served here, so left out: {', '.join(missing)}")
        print(
            f"tandem on core {server_core}, load on core {client_core}: {args.requests:,} "
            f"requests, {args.concurrency} at a time, over every door",
            flush=True,
        )
        job = (server.base, server.address["grpc"], run, keys, args.requests, args.concurrency)
        context = multiprocessing.get_context("spawn")
        with (
            kit.Sampler(
                server.pid,
                every_s=0.5,
                progress=lambda: progress.value,
                ports=frozenset(int(a.rsplit(":", 1)[1]) for a in server.address.values()),
            ) as sampler,
            context.Pool(
                1, initializer=kit.start_load_process, initargs=(progress, client_core)
            ) as pool,
        ):
            idle = sampler.take()
            pending = pool.apply_async(_client, (job,))
            _show_progress(pending, progress, sampler, args.requests, started)
            traffic: Tally = pending.get()
            ended = sampler.take(progress.value)
            time.sleep(3)
            after = sampler.take(progress.value)
        exit_code = server.stop()
        records = kit.ledger(usage, run)
    return _Ran(sampler, idle, ended, after, exit_code, records, traffic=traffic)


def _show_progress(
    pending: AsyncResult[Tally],
    progress: Synchronized[int],
    sampler: kit.Sampler,
    requests: int,
    started: float,
) -> None:
    """Until the load is done: a line at every tenth of the requests."""
    shown = 0
    while not pending.ready():
        pending.wait(5)
        if progress.value >= shown + requests // 10:
            shown = progress.value
            last = sampler.samples[-1]
            print(
                f"  {shown:,} requests, {time.monotonic() - started:.0f} s: "
                f"RSS {last.rss_mib:.0f} MiB, {last.fds} fds",
                flush=True,
            )


_Growth = tuple[float, float, float]


def _figures(
    args: argparse.Namespace, ran: _Ran, statuses: Counter[str], rss: _Growth, fds: _Growth
) -> list[tuple[str, str]]:
    traffic, idle, ended, after = ran.traffic, ran.idle, ran.ended, ran.after
    failures = sum(traffic.problems.values())
    wall = ended.at_s
    return [
        ("requests answered", f"{sum(traffic.doors.values()) - failures:,} of {args.requests:,}"),
        ("per door", ", ".join(f"{d} {n:,}" for d, n in traffic.doors.items())),
        ("wall s (requests/s)", f"{wall:.0f} ({args.requests / max(wall, 1e-9):.0f})"),
        ("server CPU s", f"{ended.cpu_s - idle.cpu_s:.1f}"),
        ("server waited for a CPU, s (a busy machine)", f"{ended.waited_s - idle.waited_s:.1f}"),
        (
            "RSS MiB: idle, warm, end, after",
            f"{idle.rss_mib:.0f}, {rss[0]:.1f}, {rss[1]:.1f}, {after.rss_mib:.1f}",
        ),
        (
            "open fds: idle, after; beyond one per client connection: warm, end",
            f"{idle.fds}, {after.fds}; {fds[0]:.0f}, {fds[1]:.0f}",
        ),
        ("ledger records", f"{len(ran.records):,} {dict(statuses)}"),
    ]


def _verdicts(
    args: argparse.Namespace, ran: _Ran, problems: list[str], rss: _Growth, fds: _Growth
) -> list[str]:
    failures = sum(ran.traffic.problems.values())
    idle, after = ran.idle, ran.after
    return [
        kit.verdict("every request answered", failures == 0, f"{failures} failed"),
        kit.verdict(
            f"RSS growth after warm-up < {args.growth:.0%}", rss[2] < args.growth, f"{rss[2]:+.1%}"
        ),
        kit.verdict(
            f"open fds (beyond client connections) growth after warm-up < {args.growth:.0%} "
            f"or {FD_RESOLUTION}",
            fds[2] < args.growth or fds[1] - fds[0] <= FD_RESOLUTION,
            f"{fds[2]:+.1%} ({fds[1] - fds[0]:+.0f})",
        ),
        kit.verdict(
            "ledger: one record per request id, as sent",
            not problems,
            f"{len(ran.records):,} records",
        ),
        kit.verdict(
            "no descriptor left open once the load ended",
            after.fds <= idle.fds,
            f"{idle.fds} before, {after.fds} after",
        ),
        kit.verdict("server exit 0 on SIGTERM", ran.exit_code == 0, str(ran.exit_code)),
    ]


def main() -> None:
    args = _arguments()
    with kit.work_folder("tandem-soak-", args.keep) as work:
        ran = _run(args, work)
    traffic = ran.traffic
    problems, statuses = kit.compare_ledger(traffic.expected, ran.records, traffic.failed)
    rss = growth(ran.sampler.samples, args.requests, "rss_mib", args.warmup)
    fds = growth(ran.sampler.samples, args.requests, "own_fds", args.warmup)
    kit.print_table("soak", _figures(args, ran, statuses, rss, fds))
    print()
    for (_, door, what), count in traffic.problems.most_common(20):
        print(f"failed: {count} x {door}: {what}")
    for problem in problems:
        print(f"ledger: {problem}")
    kit.conclude(_verdicts(args, ran, problems, rss, fds))


if __name__ == "__main__":
    main()
