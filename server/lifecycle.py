"""The process around the core: both servers on one loop, started and drained in order.

Start: telemetry, providers, policy, usage, data plane; then gRPC, then HTTP;
then ready (until then `/readyz` says `starting`), and the background checks
of the shared dependencies.
Stop (SIGTERM or SIGINT, owned here, not by uvicorn):
1. not ready: `/readyz` 503 and gRPC health NOT_SERVING, still serving for
   `server.shutdown_delay_s` (answers carry `connection: close`);
2. stop accepting and drain both servers under one `server.shutdown_grace_s`
   (a call still running when it ends is cut, and reported 503 / UNAVAILABLE);
3. flush usage (settling every budget hold of this replica), stop renewing holds;
4. close the limiter (its pending settlements are applied if Redis answers
   within what is left of the grace), the store and the providers; flush the spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Iterator

import uvicorn
from grpc import aio as grpc_aio
from grpc_health.v1 import health, health_pb2
from starlette.types import ASGIApp

from http_bridge.app import create_app
from http_bridge.transport import GuardedHttpToolsProtocol, guarded_protocol
from server.config import Config, ServerConfig, parse_host_port
from server.core.admin import KeyAdmin
from server.core.conversations import Conversations
from server.core.dataplane import DataPlane
from server.core.purging import Purger
from server.core.routing import Router
from server.drain import DrainClock
from server.grpc_door import SERVICE_NAMES, build_grpc_server
from server.policy import Policy, build_limiter
from server.policy.budgets import Budgets
from server.policy.key_cache import KeyCache
from server.policy.limiter import Limiter, LimiterEvents
from server.providers import Provider, build_providers
from server.store import Store, open_store
from server.telemetry import Telemetry
from server.telemetry.logs import LogSink
from server.telemetry.readiness import Check, DependencyMonitor, Readiness
from server.translate.responses.seal import WORKERS_SEAL_ENV, shared_sealer
from server.usage import NullRecorder, UsageBatcher, UsageRecorder
from server.usage.prices import Prices

__all__ = ["Gateway", "HttpServer", "bind_socket", "serve", "start_http_server"]

logger = logging.getLogger("tandem")

MAX_CONCURRENT_RPCS = 4096
USAGE_STORE = "usage_store"  # the store's name among the dependencies `/readyz` reports


DRAIN_BACKSTOP_S = 5.0  # past the grace, uvicorn cancels what ignored the cut


class HttpServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the lifecycle owns the signals.

    uvicorn 0.54's `serve()` wraps itself in `capture_signals()`, which would
    replace our handlers and re-raise the signal after its own shutdown.

    Its shutdown cancels the tasks still running when the grace ends, each
    logged with a traceback and reported with the status its head had (200
    for a stream). Here the connections are cut at the end of the grace
    instead (`cut_by_drain`): a handler sees its client gone and ends, its
    request reported 503; uvicorn's cancel stays as a backstop.
    """

    def __init__(self, config: uvicorn.Config, grace_s: float, drain: DrainClock) -> None:
        super().__init__(config)
        self._grace_s = grace_s
        self._drain = drain

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._drain.start(self._grace_s)
        loop = asyncio.get_running_loop()
        cut = loop.call_later(self._drain.remaining_s(), self._cut_connections)
        # the listeners close now, with what waits in their queues taken first, so
        # that closing them resets no connection a balancer sent a request on
        waiting = self._take_waiting_connections()
        for server in self.servers:
            server.close()
        try:
            for conn in waiting:  # served like the others the drain finds before a request
                await self._adopt(conn)
            await super().shutdown(sockets)
        finally:
            cut.cancel()

    def _take_waiting_connections(self) -> list[socket.socket]:
        """The connections the kernel completed that the loop has not accepted yet:
        closing a listener would reset them."""
        taken: list[socket.socket] = []
        for server in self.servers:
            for listener in server.sockets:
                with socket.socket(fileno=os.dup(listener.fileno())) as own:
                    own.setblocking(False)
                    while True:
                        try:
                            conn, _ = own.accept()
                        except OSError:  # BlockingIOError: none left
                            break
                        conn.setblocking(False)
                        taken.append(conn)
        return taken

    async def _adopt(self, conn: socket.socket) -> None:
        """`conn` served as uvicorn serves what it accepts (its `create_protocol`)."""
        config = self.config
        await asyncio.get_running_loop().connect_accepted_socket(
            lambda: config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            ),
            conn,
        )

    def _cut_connections(self) -> None:
        for connection in list(self.server_state.connections):
            if isinstance(connection, GuardedHttpToolsProtocol):
                connection.cut_by_drain()


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_socket(address: str, *, reuse_port: bool = False) -> socket.socket:
    host, port = parse_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # one of several workers sharing the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen for HTTP on {address}: {exc.strerror}") from None
    return sock


async def start_http_server(
    app: ASGIApp,
    sock: socket.socket,
    limits: ServerConfig,
    telemetry: Telemetry | None = None,
    drain: DrainClock | None = None,
) -> tuple[HttpServer, asyncio.Task[None]]:
    """uvicorn serving `app` on a bound socket, in this loop; returns once it accepts.

    The protocol is httptools with the transport bounds of `limits` (header
    size and time, body time, keep-alive, connections): see
    `http_bridge/transport.py`. `drain` says when the shutdown grace ends.
    """
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        http=guarded_protocol(limits, telemetry),
        # a float serves (uvicorn only passes it to `call_later`)
        timeout_keep_alive=limits.keep_alive_timeout_s,  # type: ignore[arg-type]
        server_header=False,
        proxy_headers=False,
        # no WebSocket is served: an upgrade reaches the app as a plain request, even
        # with a WebSocket library installed (`GET /v1/responses` answers it 426)
        ws="none",
        timeout_graceful_shutdown=math.ceil(limits.shutdown_grace_s + DRAIN_BACKSTOP_S),
    )
    server = HttpServer(config, limits.shutdown_grace_s, drain or DrainClock())
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise OSError(f"cannot serve HTTP on {sock.getsockname()}")
        await asyncio.sleep(0.005)
    return server, task


GC_YOUNG_THRESHOLD = 50_000  # container objects allocated before a young collection


def settle_garbage_collector() -> None:
    """What start-up made is kept out of every collection (`gc.freeze`), and the young
    generation is collected less often: a request's garbage is freed by reference
    counts, but under load the in-flight requests keep enough alive that the
    collector took ~7% of a proxied request's CPU here (perf), and this saved ~8%
    of it (wrk, three interleaved rounds). Cycles are still collected, late."""
    gc.collect()  # start-up's own garbage first, or it is frozen for good
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


class Gateway:
    """Owns everything with a lifetime, from start to the end of the drain."""

    def __init__(
        self,
        config: Config,
        *,
        http: str,
        grpc: str,
        reuse_port: bool = False,
        logs: LogSink | None = None,
        prices: Prices | None = None,
    ) -> None:
        """`prices`: built from the config when not given (`tandem serve` builds them
        before, to log them)."""
        self.config = config
        self._reuse_port = reuse_port
        self._http_address = http
        self._grpc_address = grpc
        self.telemetry = Telemetry(config.telemetry, logs)
        self.readiness = Readiness(self.telemetry.metrics)
        self._monitor: DependencyMonitor | None = None
        self._providers: dict[str, Provider] = {}
        self._usage: UsageRecorder = NullRecorder()
        self._limiter: Limiter | None = None
        self._store: Store | None = None
        self._purger: Purger | None = None
        self._budgets: Budgets | None = None
        self._health = health.aio.HealthServicer()
        self._grpc_server: grpc_aio.Server | None = None
        self._http_server: HttpServer | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._drain = DrainClock()
        self._prices = prices

    async def start(self) -> tuple[str, str]:
        """Start serving; return the bound HTTP and gRPC addresses."""
        plane, policy = await self._open_core()
        admin = KeyAdmin(self._store, self.config, policy)  # the admin API, both doors'
        grpc_address = await self._start_grpc(plane, policy, admin)
        http_address = await self._start_http(plane, policy, admin)
        await self._become_ready()
        return http_address, grpc_address

    async def _open_core(self) -> tuple[DataPlane, Policy]:
        """Providers, limiter, store (with the key cache and the usage batcher), policy:
        the data plane both doors call."""
        config = self.config
        metrics = self.telemetry.metrics
        self._providers = build_providers(config)
        self._limiter = build_limiter(
            config,
            LimiterEvents(
                backend_error=metrics.limiter_errors.inc,
                settlement_deferred=metrics.settlements_deferred.inc,
                settlement_applied_late=metrics.settlements_applied_late.inc,
                settlement_dropped=metrics.settlements_dropped.inc,
            ),
        )
        keys = await self._open_store()
        policy = Policy(config, self._limiter, keys, self._budgets)
        router = Router(config, self._providers)
        # once, here: the key may be read from the store, never on a request's path
        sealer = await shared_sealer(
            config.responses.seal_key, self._store, os.environ.get(WORKERS_SEAL_ENV)
        )
        prices = self._prices if self._prices is not None else Prices.from_config(config)
        plane = DataPlane(
            router, policy, self._usage, self._store, self.telemetry.tracer, sealer, prices=prices
        )
        return plane, policy

    async def _open_store(self) -> KeyCache | None:
        """The store, if one is configured: its API keys cached, usage batched into it."""
        config = self.config
        metrics = self.telemetry.metrics
        self._store = open_store(config.usage.store)
        if self._store is None:
            return None
        await self._store.open()
        keys = KeyCache(
            self._store,
            config.auth.key_cache_s,
            on_lookup=lambda result: metrics.key_lookups.labels(result).inc(),
        )
        await keys.load()
        batcher = UsageBatcher(
            self._store,
            flush_interval_s=config.usage.flush_interval_ms / 1000,
            batch_size=config.usage.batch_size,
            max_pending=config.usage.max_pending,
            metrics=metrics,
        )
        batcher.start()
        self._usage = batcher
        # its leases renewed, expired ones swept; offline holds counted until written
        self._budgets = Budgets(self._store, flushed=batcher.flushed)
        self._budgets.start()
        self._purger = Purger(self._store)  # expired stored responses, in the background
        self._purger.start()
        return keys

    async def _start_grpc(self, plane: DataPlane, policy: Policy, admin: KeyAdmin) -> str:
        """The gRPC door, accepting, and not serving (health) until both doors accept."""
        server_config = self.config.server
        for service in ("", *SERVICE_NAMES):
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._grpc_server = build_grpc_server(
            plane,
            policy,
            self._health,
            self.telemetry,
            max_message_bytes=server_config.max_body_bytes,
            max_concurrent_rpcs=MAX_CONCURRENT_RPCS,
            reuse_port=self._reuse_port,
            drain=self._drain,
            write_timeout_s=server_config.write_timeout_s,
            admin=admin,
        )
        grpc_host, grpc_port = parse_host_port(self._grpc_address)
        try:
            grpc_port = self._grpc_server.add_insecure_port(_format_address(grpc_host, grpc_port))
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {self._grpc_address}") from exc
        await self._grpc_server.start()
        return _format_address(grpc_host, grpc_port)

    async def _start_http(self, plane: DataPlane, policy: Policy, admin: KeyAdmin) -> str:
        """The HTTP doors, accepting (`/readyz` says `starting` until ready)."""
        server_config = self.config.server
        sock = bind_socket(self._http_address, reuse_port=self._reuse_port)
        http_host, http_port = sock.getsockname()[:2]
        app = create_app(
            plane,
            policy,
            max_body_bytes=server_config.max_body_bytes,
            telemetry=self.telemetry,
            readiness=self.readiness,
            cors_origins=server_config.cors_origins,
            conversations=Conversations(
                self._store, self.config.responses, policy, self._store_down
            ),
            admin=admin,
        )
        self._http_server, self._http_task = await start_http_server(
            app, sock, server_config, self.telemetry, self._drain
        )
        return _format_address(http_host, http_port)

    async def _become_ready(self) -> None:
        """Both doors accept: serving (health), the shared dependencies watched (ready
        says what is degraded from the first answer), start-up's objects kept out of
        the collector, then ready."""
        for service in ("", *SERVICE_NAMES):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._monitor = DependencyMonitor(self._dependency_checks(), self.telemetry.metrics)
        self.readiness.monitor = self._monitor
        await self._monitor.check_once()
        self._monitor.start()
        settle_garbage_collector()
        self.readiness.set_ready()

    def _store_down(self) -> bool:
        """The usage store did not answer its last background check."""
        return self._monitor is not None and USAGE_STORE in self._monitor.down

    def _dependency_checks(self) -> dict[str, Check]:
        """The shared dependencies this replica uses, by the name `/readyz` gives them."""
        checks: dict[str, Check] = {}
        if self._store is not None:
            checks[USAGE_STORE] = self._store.ping
        if self._limiter is not None and self.config.rate_limits.backend == "redis":
            checks["redis"] = self._limiter.ping  # type: ignore[attr-defined]
        return checks

    async def stop(self) -> None:
        """Drain in the documented order; safe after a partial start."""
        server_config = self.config.server
        self.readiness.set_draining()
        await self._health.enter_graceful_shutdown()
        if server_config.shutdown_delay_s and self._http_task is not None:
            logger.info(
                "not ready; serving for %ss before draining", server_config.shutdown_delay_s
            )
            await asyncio.sleep(server_config.shutdown_delay_s)

        logger.info("draining (grace %ss)", server_config.shutdown_grace_s)
        self._drain.start(server_config.shutdown_grace_s)
        drains: list[Awaitable[None]] = []
        if self._grpc_server is not None:
            drains.append(self._grpc_server.stop(server_config.shutdown_grace_s))
        if self._http_server is not None and self._http_task is not None:
            self._http_server.should_exit = True
            drains.append(self._http_task)
        await asyncio.gather(*drains)

        if self._monitor is not None:
            await self._monitor.stop()
        await self._usage.drain()  # every hold settled by its record, or swept
        if self._budgets is not None:
            await self._budgets.aclose()
        if self._purger is not None:
            await self._purger.stop()
        if self._limiter is not None:
            # pending settlements get what is left of the grace (a second at least)
            await self._limiter.aclose(max(self._drain.remaining_s(), 1.0))
        if self._store is not None:
            await self._store.aclose()
        for provider in self._providers.values():
            await provider.aclose()
        await asyncio.to_thread(self.telemetry.shutdown)
        logger.info("stopped")


async def serve(gateway: Gateway) -> None:
    """Run a gateway until SIGTERM or SIGINT, then drain it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        http_address, grpc_address = await gateway.start()
        sys.stdout.write(f"http listening on {http_address}\ngrpc listening on {grpc_address}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await gateway.stop()
