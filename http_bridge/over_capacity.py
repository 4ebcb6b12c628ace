"""What a worker answers on a connection past `server.max_connections`: the probes
(so that a full worker is not restarted by its own probes), then the connection
closes; 503 `too_many_connections` with `retry-after: 1` for any other path. The
transport (`transport.py`) swaps this in for the app of such a connection."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from http_bridge.call_scope import CallScopeMiddleware
from http_bridge.errors import openai_error_body
from server.errors import UnavailableError
from server.telemetry import Telemetry

__all__ = ["ProbesOnly", "over_capacity_app"]

_PROBES = frozenset(("/healthz", "/readyz"))


class ProbesOnly:
    """What a connection over `max_connections` is served: the probes, then closed
    (the path is read under the header bounds), and 503 for anything else."""

    __slots__ = ("app", "refuse")

    def __init__(self, app: ASGIApp, refuse: ASGIApp) -> None:
        self.app = app
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") not in _PROBES:
            await self.refuse(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, send_closing)


def over_capacity_app(max_connections: int, telemetry: Telemetry | None) -> CallScopeMiddleware:
    body = orjson.dumps(
        openai_error_body(
            UnavailableError(
                f"the server has {max_connections} connections open; retry shortly",
                code="too_many_connections",
            )
        )
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]

    async def over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return CallScopeMiddleware(over_capacity, telemetry)
