"""The gRPC door of a data plane in this process, on a port of its own, for the tests
that need the plane's insides (grpcio-testing can't test grpc.aio: grpc/grpc#24942)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health

from server.config import TelemetryConfig
from server.core.dataplane import DataPlane
from server.grpc_door import build_grpc_server
from server.policy import Policy
from server.telemetry import Telemetry

__all__ = ["grpc_channel"]


@contextlib.asynccontextmanager
async def grpc_channel(plane: DataPlane, policy: Policy) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to `plane`'s gRPC door, served until the block ends."""
    server = build_grpc_server(
        plane,
        policy,
        health.aio.HealthServicer(),
        Telemetry(TelemetryConfig(access_log=False)),
        max_message_bytes=1 << 20,
        max_concurrent_rpcs=8,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)
