"""A data plane in this process over one provider, for tests that need what no live
server can show (a provider that fails as only a bug would, a provider they drive); its
gRPC door: tests/grpc_in_process.py, its HTTP side: a real uvicorn
(tests/test_cancellation.py) or httpx's ASGITransport."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import cast

from tandem.v1 import chat_pb2

from server.config import load_config
from server.core.dataplane import DataPlane
from server.core.routing import Router
from server.policy import Policy
from server.providers import Provider
from server.usage import NullRecorder, UsageRecorder
from server.usage.prices import Prices

__all__ = ["SECRET", "BrokenProvider", "plane_over"]

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
    recorder = NullRecorder() if recorder is None else recorder
    return plane(router, Policy(config), recorder, prices=Prices.from_config(config))
