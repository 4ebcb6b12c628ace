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
import shutil
import statistics
import tempfile
import time
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import uvloop
from doors import Tally, Traffic, served
from scale_kit import (
    Sample,
    Sampler,
    Server,
    compare_ledger,
    cores,
    create_key,
    ledger,
    python,
    shared_counter,
    start_load_process,
    verdict,
    wait_ready,
)

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
    progress = shared_counter()
    with progress.get_lock():
        progress.value += 1


def _client(job: tuple[str, str, str, list[str], int, int]) -> Tally:
    base, grpc_target, run, keys, requests, concurrency = job
    doors, _ = served(base)
    traffic = Traffic(base, grpc_target, run, keys, doors, done=_advance)
    uvloop.run(traffic.drive(requests, concurrency))
    return traffic.tally


def growth(
    samples: list[Sample], total: int, figure: str, warmup: float
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--warmup", type=float, default=0.25, help="the fraction of the requests not judged"
    )
    parser.add_argument("--growth", type=float, default=0.05, help="RSS and fds, after warm-up")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, ledger)")
    args = parser.parse_args()
    server_core, client_core = cores()
    work = Path(tempfile.mkdtemp(prefix="tandem-soak-"))
    usage = f"sqlite:///{work / 'usage.db'}"
    run = f"soak-{os.getpid()}-"
    server = None
    progress: Synchronized[int] = multiprocessing.get_context("spawn").Value("q", 0)
    started = time.monotonic()
    try:
        config = work / "tandem.yaml"
        config.write_text(CONFIG % {"usage": usage})
        keys = [create_key(python(), config, f"soak{i}", "free")[1] for i in range(4)]
        server = Server.start(
            [
                *(python(), "-m", "server.cli", "serve", "--config", str(config)),
                *("--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"),
            ],
            core=server_core,
            log=work / "tandem.log",
        )
        base = f"http://{server.address['http']}"
        wait_ready(base)
        _, missing = served(base)
        if missing:
            print(f"not served here, so left out: {', '.join(missing)}")
        print(
            f"tandem on core {server_core}, load on core {client_core}: {args.requests:,} "
            f"requests, {args.concurrency} at a time, over every door",
            flush=True,
        )
        job = (base, server.address["grpc"], run, keys, args.requests, args.concurrency)
        context = multiprocessing.get_context("spawn")
        with (
            Sampler(
                server.pid,
                every_s=0.5,
                progress=lambda: progress.value,
                ports=frozenset(int(a.rsplit(":", 1)[1]) for a in server.address.values()),
            ) as sampler,
            context.Pool(
                1, initializer=start_load_process, initargs=(progress, client_core)
            ) as pool,
        ):
            idle = sampler.take()
            pending = pool.apply_async(_client, (job,))
            shown = 0
            while not pending.ready():
                pending.wait(5)
                if progress.value >= shown + args.requests // 10:
                    shown = progress.value
                    last = sampler.samples[-1]
                    print(
                        f"  {shown:,} requests, {time.monotonic() - started:.0f} s: "
                        f"RSS {last.rss_mib:.0f} MiB, {last.fds} fds",
                        flush=True,
                    )
            traffic: Tally = pending.get()
            ended = sampler.take(progress.value)
            time.sleep(3)
            after = sampler.take(progress.value)
        exit_code = server.stop()
        records = ledger(usage, run)
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    wall = ended.at_s
    problems, statuses = compare_ledger(traffic.expected, records, traffic.failed)
    rss = growth(sampler.samples, args.requests, "rss_mib", args.warmup)
    fds = growth(sampler.samples, args.requests, "own_fds", args.warmup)
    failures = sum(traffic.problems.values())
    print()
    print("| soak | |\n|---|---|")
    for name, value in [
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
        ("ledger records", f"{len(records):,} {dict(statuses)}"),
    ]:
        print(f"| {name} | {value} |")
    print()
    for (_, door, what), count in traffic.problems.most_common(20):
        print(f"failed: {count} x {door}: {what}")
    for problem in problems:
        print(f"ledger: {problem}")
    lines = [
        verdict("every request answered", failures == 0, f"{failures} failed"),
        verdict(
            f"RSS growth after warm-up < {args.growth:.0%}", rss[2] < args.growth, f"{rss[2]:+.1%}"
        ),
        verdict(
            f"open fds (beyond client connections) growth after warm-up < {args.growth:.0%} "
            f"or {FD_RESOLUTION}",
            fds[2] < args.growth or fds[1] - fds[0] <= FD_RESOLUTION,
            f"{fds[2]:+.1%} ({fds[1] - fds[0]:+.0f})",
        ),
        verdict(
            "ledger: one record per request id, as sent", not problems, f"{len(records):,} records"
        ),
        verdict(
            "no descriptor left open once the load ended",
            after.fds <= idle.fds,
            f"{idle.fds} before, {after.fds} after",
        ),
        verdict("server exit 0 on SIGTERM", exit_code == 0, str(exit_code)),
    ]
    print("\n".join(lines))
    print("(figures taken on a shared machine are indicative only)")
    raise SystemExit(0 if all(line.startswith("PASS") for line in lines) else 1)


if __name__ == "__main__":
    main()
