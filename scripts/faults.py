"""`make faults`: the stores stopped and restarted under load.

Starts its own `redis-server` (append-only file, so a restart keeps the
buckets) and its own PostgreSQL (Debian's binaries, a temporary cluster,
as the `postgres` user when run as root) on free ports — the machine's
shared ones are never touched — and a `tandem serve` with `rate_limits:
{backend: redis}` and `usage: {store: postgresql://...}`. Mixed traffic over
every door (scripts/doors.py) runs throughout on keys made beforehand and
already looked up (cached); every `--fresh-every`th request uses a key never
seen before, whose lookup needs PostgreSQL.

Timeline: warm-up; a few probe streams (their own key, a small tokens/min
tier, an `openai`-kind model whose usage says 100 completion tokens) start;
Redis stops while they run, so their settlements cannot reach it; Redis
restarts; then PostgreSQL stops and restarts; the load ends, the server
drains. Checked: no request failed but a fresh key's lookup while
PostgreSQL was down (the contract's 503 `unavailable_error`, counted apart);
the ledger has exactly one record per request id (usage kept while
PostgreSQL was down, then written); the probe key's token bucket in Redis is
what the ledger charged it, less what refilled since (a settlement that
failed while Redis was down is applied once it answers).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import asyncpg
import httpx
import redis
import scale_kit as kit
import uvloop
from doors import Tally, Traffic, served

PHASES = ("warm-up", "Redis down", "Redis back", "PostgreSQL down", "PostgreSQL back")
PROBE_TPM = 600  # tokens a minute: the probe's bucket refills 10 tokens a second
PROBE_STREAMS = 5
PROBE_CHUNKS = 100  # the drip upstream's completion_tokens for each probe stream
RESETTLE_S = 5.0  # the contract: pending settlements land within 5 s of Redis answering

CONFIG = """
providers:
  - {name: demo, kind: mock}
  - {name: slow, kind: mock, chunk_delay_ms: 25}
  - {name: drip, kind: openai, base_url: "http://%(upstream)s/v1", api_key: x}
models:
  - {name: echo, provider: demo}
  - {name: slow, provider: slow}
  - {name: drip, provider: drip}
auth: {required: true}
rate_limits: {backend: redis, url: "redis://127.0.0.1:%(redis)d/0", prefix: "faults:"}
usage: {store: "%(usage)s"}
tiers:
  free: {default_model: echo, requests_per_minute: 100000000, tokens_per_minute: 1000000000}
  probe: {default_model: drip, models: [drip], tokens_per_minute: %(probe_tpm)d}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not ready within {timeout_s:g} s")


class RedisServer:
    """redis-server on `port`, its append-only file in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self._folder = folder
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self._folder), "--appendonly", "yes", "--save", ""),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        wait_for("redis-server", lambda: _answers(client.ping))

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # redis writes its append-only file and exits
            self._proc.wait(30)


def _answers(ping: Callable[[], object]) -> bool:
    try:
        ping()
    except Exception:
        return False
    return True


class PostgresServer:
    """A temporary PostgreSQL cluster (Debian's binaries) on `port`."""

    def __init__(self, folder: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
        if not found:
            raise RuntimeError("needs PostgreSQL's server: apt-get install postgresql")
        self._bin = Path(found[-1]).parent
        self.port = free_port()
        self._data = folder / "pgdata"
        self._folder = folder
        self._proc: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            shutil.chown(folder, "postgres")
        subprocess.run(
            self._as_owner(
                [str(self._bin / "initdb"), "-D", str(self._data), "-A", "trust", "-U", "postgres"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def start(self) -> None:
        self._proc = subprocess.Popen(
            self._as_owner(
                [
                    *(str(self._bin / "postgres"), "-D", str(self._data), "-p", str(self.port)),
                    *("-k", str(self._folder), "-c", "listen_addresses=127.0.0.1"),
                    *("-c", "fsync=off"),
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for("postgres", lambda: _answers(lambda: asyncio.run(_pg_ping(self.dsn))))

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            # a fast shutdown (runuser passes no SIGINT on to postgres)
            pg_ctl = [str(self._bin / "pg_ctl"), "stop", "-D", str(self._data), "-m", "fast"]
            subprocess.run(self._as_owner(pg_ctl), check=True, stdout=subprocess.DEVNULL)
            self._proc.wait(60)


async def _pg_ping(dsn: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=2)
    await connection.close()


async def _fresh_keys(dsn: str, count: int) -> list[str]:
    """`count` keys in the store, as `tandem keys create` makes them, never used yet."""
    from server.store import open_store
    from server.store.keys import new_key

    store = open_store(dsn)
    assert store is not None
    await store.open()
    keys = []
    try:
        for index in range(count):
            key, record = new_key(f"fresh{index}", "free")
            await store.create_key(record)
            keys.append(key)
    finally:
        await store.aclose()
    return keys


def _current_phase() -> str:
    return PHASES[kit.shared_counter().value]


# the load's work: (base, gRPC target, run, keys, fresh keys, fresh every, concurrency, s)
_Job = tuple[str, str, str, list[str], list[str], int, int, float]


def _client(job: _Job) -> Tally:
    base, grpc_target, run, keys, fresh, fresh_every, concurrency, seconds = job
    doors, _ = served(base)
    traffic = Traffic(
        base,
        grpc_target,
        run,
        keys,
        doors,
        fresh_keys=iter(fresh),
        fresh_every=fresh_every,
        phase=_current_phase,
    )
    uvloop.run(traffic.drive(None, concurrency, until=time.monotonic() + seconds))
    return traffic.tally


def _probe(base: str, key: str, run: str, index: int, failures: list[str]) -> None:
    """One probe stream, read to its end."""
    body = {
        "model": "drip",
        "messages": [{"role": "user", "content": f"drip {PROBE_CHUNKS}"}],
        "stream": True,
    }
    headers = {"authorization": f"Bearer {key}", "x-request-id": f"{run}probe-{index}"}
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as answer:
        text = "".join(answer.iter_text())
    if answer.status_code != 200 or "data: [DONE]" not in text:
        failures.append(f"probe {index}: {answer.status_code} {text[:120]!r}")


def _bucket_tokens(port: int, key_id: str) -> float:
    """The probe's debt in its Redis token bucket: (TAT - now) in tokens, at least 0."""
    client = redis.Redis(port=port)
    tat = client.get(f"faults:key:{key_id}:t")
    seconds, micros = client.time()
    if tat is None:
        return 0.0
    ahead_us = float(tat) - (seconds * 1_000_000 + micros)
    return max(ahead_us, 0.0) * PROBE_TPM / 60e6


async def _charged(dsn: str, prefix: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        total = await connection.fetchval(
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage_records "
            "WHERE request_id LIKE $1",
            prefix + "%",
        )
        return int(total)
    finally:
        await connection.close()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--outage-s", type=float, default=10.0, help="each store's time down")
    parser.add_argument("--settle-s", type=float, default=10.0, help="time between the phases")
    parser.add_argument("--fresh-every", type=int, default=97, help="a never-seen key every N")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    return parser.parse_args()


@contextmanager
def _stores() -> Iterator[tuple[RedisServer, PostgresServer]]:
    """Redis and PostgreSQL of their own, started; stopped and their files removed after."""
    folder = Path(tempfile.mkdtemp(prefix="tandem-faults-stores-"))
    redis_server = RedisServer(folder)
    try:
        postgres = PostgresServer(folder)
        try:
            redis_server.start()
            postgres.start()
            yield redis_server, postgres
        finally:
            redis_server.stop()
            postgres.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class _Clock:
    """The timeline: each step's moment, from the load's start."""

    started: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)

    def at(self, offset: float, name: str) -> None:
        time.sleep(max(self.started + offset - time.monotonic(), 0))
        self.marks[name] = time.monotonic()
        print(f"  {offset:4.0f} s: {name}", flush=True)


@dataclass
class _Probe:
    """The probe key, its streams' request ids' prefix, and what its streams got wrong."""

    id: str
    key: str
    run: str
    failures: list[str] = field(default_factory=list)


@dataclass
class _Ran:
    """What a run measured, read once the servers and stores have stopped."""

    tally: Tally
    marks: dict[str, float]
    debt: float  # the probe's Redis bucket, read
    probe: _Probe
    peak_rss: float
    # read once the server has stopped
    exit_code: int = -1
    records: list[tuple[str, str]] = field(default_factory=list)
    charged: int = 0  # the probe's tokens in the ledger


def _run(args: argparse.Namespace, run: str, work: Path) -> _Ran:
    """The stores, the upstream and tandem started, the faults played under load, all stopped."""
    server_core, client_core = kit.cores()
    drip = [kit.python(), str(kit.SCRIPTS / "drip_upstream.py")]
    with (
        _stores() as (redis_server, postgres),
        kit.Server.start(drip, core=client_core, log=work / "up.log") as upstream,
    ):
        config = work / "tandem.yaml"
        config.write_text(
            CONFIG
            % {
                "upstream": upstream.address["http"],
                "redis": redis_server.port,
                "usage": postgres.dsn,
                "probe_tpm": PROBE_TPM,
            }
        )
        keys = [kit.create_key(kit.python(), config, f"cached{i}", "free")[1] for i in range(4)]
        probe = _Probe(*kit.create_key(kit.python(), config, "probe", "probe"), run=run)
        with kit.serve(config, core=server_core, log=work / "tandem.log") as server:
            for key in keys:  # looked up once now: cached from here on
                httpx.get(f"{server.base}/v1/models", headers={"authorization": f"Bearer {key}"})
            step, outage = args.settle_s, args.outage_s
            seconds = 3 * step + 2 * outage + step
            fresh = asyncio.run(_fresh_keys(postgres.dsn, int(seconds * 1000 / args.fresh_every)))
            print(
                f"tandem on core {server_core}, load on core {client_core}; Redis on "
                f"{redis_server.port}, PostgreSQL on {postgres.port}; {seconds:.0f} s of load, "
                f"each store down {outage:g} s",
                flush=True,
            )
            job = (
                *(server.base, server.address["grpc"], run, keys, fresh),
                *(args.fresh_every, args.concurrency, seconds),
            )
            ran = _under_load(args, job, server, (redis_server, postgres), probe, client_core)
            ran.exit_code = server.stop()
            ran.records = kit.ledger(postgres.dsn, run)
            ran.charged = asyncio.run(_charged(postgres.dsn, f"{run}probe-"))
    return ran


def _under_load(
    args: argparse.Namespace,
    job: _Job,
    server: kit.Server,
    stores: tuple[RedisServer, PostgresServer],
    probe: _Probe,
    client_core: int | None,
) -> _Ran:
    """The load driven from its own process while the faults are played; what it saw."""
    context = multiprocessing.get_context("spawn")
    phase: Synchronized[int] = context.Value("i", 0)
    with (
        kit.Sampler(server.pid, every_s=1.0) as sampler,
        context.Pool(1, initializer=kit.start_load_process, initargs=(phase, client_core)) as pool,
    ):
        clock = _Clock()
        pending = pool.apply_async(_client, (job,))
        debt = _play_faults(args, clock, phase, stores, probe, base=server.base)
        tally: Tally = pending.get()
        print(f"  {time.monotonic() - clock.started:4.0f} s: load done", flush=True)
        sampler.take()
    return _Ran(tally, clock.marks, debt, probe, sampler.peak_rss())


def _play_faults(
    args: argparse.Namespace,
    clock: _Clock,
    phase: Synchronized[int],
    stores: tuple[RedisServer, PostgresServer],
    probe: _Probe,
    *,
    base: str,
) -> float:
    """The timeline: probe streams, Redis down and back, PostgreSQL down and back; the
    probe's Redis bucket as read after Redis came back."""
    redis_server, postgres = stores
    step, outage = args.settle_s, args.outage_s
    clock.at(step - 2, "probe streams start")
    probes = [
        threading.Thread(target=_probe, args=(base, probe.key, probe.run, i, probe.failures))
        for i in range(PROBE_STREAMS)
    ]
    for thread in probes:
        thread.start()
    clock.at(step, "Redis stops")
    phase.value = 1
    redis_server.stop()
    clock.at(step + outage, "Redis restarts")
    redis_server.start()
    phase.value = 2
    clock.marks["Redis answers"] = time.monotonic()
    for thread in probes:
        thread.join()
    clock.at(2 * step + outage - 1, "probe bucket read")
    debt = _bucket_tokens(redis_server.port, probe.id)
    clock.at(2 * step + outage, "PostgreSQL stops")
    phase.value = 3
    postgres.stop()
    clock.at(2 * step + 2 * outage, "PostgreSQL restarts")
    postgres.start()
    phase.value = 4
    return debt


def _expected_debt(ran: _Ran) -> tuple[float, float]:
    """(lowest, highest) the probe's bucket may read: what the ledger charged, less what
    refilled since the streams started (lowest) or since the settlements were due."""
    refill = PROBE_TPM / 60  # tokens a second
    marks, charged = ran.marks, ran.charged
    read = marks["probe bucket read"]
    lowest = max(charged - refill * (read - marks["probe streams start"]), 0.0)
    highest = max(charged - refill * max(read - marks["Redis answers"] - RESETTLE_S, 0.0), 0)
    return lowest, highest


def _figures(ran: _Ran, statuses: Counter[str], debt: tuple[float, float]) -> list[tuple[str, str]]:
    tally, (lowest, highest) = ran.tally, debt
    return [
        ("requests", f"{sum(tally.doors.values()):,} over {len(tally.doors)} doors"),
        ("failed", f"{sum(tally.problems.values())}"),
        ("503 on a fresh key while PostgreSQL was down", f"{sum(tally.unavailable.values())}"),
        ("ledger records", f"{len(ran.records):,} {dict(statuses)}"),
        ("probe: charged in the ledger (tokens)", f"{ran.charged}"),
        ("probe: Redis bucket's debt, expected", f"{lowest:.0f} to {highest:.0f}"),
        ("probe: Redis bucket's debt, read", f"{ran.debt:.0f}"),
        ("peak RSS MiB", f"{ran.peak_rss:.0f}"),
    ]


def _verdicts(ran: _Ran, problems: list[str], debt: tuple[float, float]) -> list[str]:
    failures, (lowest, highest) = sum(ran.tally.problems.values()), debt
    probe_failures = ran.probe.failures
    unavailable_elsewhere = [w for w, _ in ran.tally.unavailable if w != "PostgreSQL down"]
    return [
        kit.verdict(
            "no request failed that did not need the stopped store",
            failures == 0,
            f"{failures} failed",
        ),
        kit.verdict(
            "503s only for fresh keys while PostgreSQL was down",
            not unavailable_elsewhere,
            ", ".join(unavailable_elsewhere) or "yes",
        ),
        kit.verdict("probe streams complete", not probe_failures, f"{len(probe_failures)} failed"),
        kit.verdict(
            "ledger: one record per request id, as sent",
            not problems,
            f"{len(ran.records):,} records",
        ),
        kit.verdict(
            "probe's Redis bucket = what the ledger charged, less the refill",
            lowest - 2 <= ran.debt <= highest + 2,
            f"read {ran.debt:.0f}, expected {lowest:.0f} to {highest:.0f}",
        ),
        kit.verdict("server exit 0 on SIGTERM", ran.exit_code == 0, str(ran.exit_code)),
    ]


def main() -> None:
    args = _arguments()
    run = f"faults-{os.getpid()}-"
    with kit.work_folder("tandem-faults-", args.keep) as work:
        ran = _run(args, run, work)
    tally = ran.tally
    probe_ids = {f"{run}probe-{i}": "ok" for i in range(PROBE_STREAMS)}
    problems, statuses = kit.compare_ledger(
        {**tally.expected, **probe_ids}, ran.records, tally.failed
    )
    debt = _expected_debt(ran)
    kit.print_table("faults", _figures(ran, statuses, debt))
    print()
    for (when, door, what), count in tally.problems.most_common(20):
        print(f"failed: {count} x {door} ({when}): {what}")
    for (when, door), count in sorted(tally.unavailable.items()):
        print(f"503 unavailable (fresh key): {count} x {door} ({when})")
    for problem in [*problems, *ran.probe.failures]:
        print(f"ledger: {problem}")
    kit.conclude(_verdicts(ran, problems, debt))


if __name__ == "__main__":
    main()
