"""The gateway assembled in this process, for tests that need what no live server can
show (a provider that fails as only a bug would, a provider they drive): its data plane
over one provider, and its gRPC server on port 0. The HTTP side runs on a real uvicorn
(tests/test_cancellation.py) or httpx's ASGITransport."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from grpc_health.v1 import health
from tandem.v1 import chat_pb2

from server.config import TelemetryConfig, load_config
from server.core.dataplane import DataPlane
from server.core.routing import Router
from server.grpc_service import build_grpc_server
from server.policy import Policy
from server.providers import Provider
from server.telemetry import Telemetry
from server.usage import NullRecorder, UsageRecorder

__all__ = ["SECRET", "BrokenProvider", "grpc_server", "plane_over"]

SECRET = "secret detail at https://upstream.invalid/?key=sk-123"


class BrokenProvider:
    """Every call raises what a bug would, with `SECRET` in its message."""

    name = kind = "mock"
    max_retries = 0

    def stream(
        self, *args: object, **kwargs: object
    ) -> AsyncGenerator[list[chat_pb2.ChatCompletionChunk], None]:
        raise RuntimeError(SECRET)

    async def embed(self, *args: object) -> object:
        raise RuntimeError(SECRET)

    async def aclose(self) -> None:
        return None


def plane_over(
    provider: object, recorder: UsageRecorder | None = None, plane: type[DataPlane] = DataPlane
) -> DataPlane:
    """A data plane on the built-in config, whose `mock` provider is `provider`."""
    config = load_config(None, environ={})
    router = Router(config, {"mock": cast(Provider, provider)})
    return plane(router, Policy(config), NullRecorder() if recorder is None else recorder)


@asynccontextmanager
async def grpc_server(plane: DataPlane) -> AsyncIterator[str]:
    """The gateway's gRPC server over `plane`, on port 0 in this loop: its target."""
    server = build_grpc_server(
        plane,
        plane.policy,
        health.aio.HealthServicer(),
        Telemetry(TelemetryConfig(access_log=False)),
        max_message_bytes=1 << 20,
        max_concurrent_rpcs=8,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
