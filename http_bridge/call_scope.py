"""Pure ASGI middleware around every HTTP request: its id, its timing, its report.

- `x-request-id` on every answer: a valid incoming id (up to 128 of
  `[A-Za-z0-9._:-]`) is echoed, else a new one is made; it is kept in
  `scope["state"]["request_id"]` for the handlers, beside the arrival time,
  the caller's `traceparent` and its `anthropic-beta` (sent on to Anthropic).
- `server-timing: gateway;dur=<ms>, upstream;dur=<ms>` on every answer:
  arrival to the response head, and the provider's time where one was called.
- `x-tandem-ignored-fields` on the answer of a call whose upstream left fields of
  the request out (server/translate/extra.py): known before any answer starts.
- `connection: close` on every answer while the replica is not ready, so a
  balancer stops reusing kept-alive connections to a replica that drains.
- A door request (a path of a door: doors.py) is reported once its answer has
  gone: one access line and its metrics (server/telemetry).
- An exception that escapes the app is logged with the request id and
  answered with the contract's `internal_error` body, never a traceback.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from http_bridge.doors import door_at, spelling_at
from http_bridge.errors import error_response
from server.context import CallContext, request_id_from
from server.errors import InternalError
from server.telemetry import Telemetry
from server.telemetry.readiness import Readiness

__all__ = ["CallScopeMiddleware"]

logger = logging.getLogger("tandem.http")


class CallScopeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        telemetry: Telemetry | None = None,
        readiness: Readiness | None = None,
    ) -> None:
        self.app = app
        self._telemetry = telemetry
        self._readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        request_id, state = _open_scope(scope, started)
        id_header = (b"x-request-id", request_id.encode())
        readiness = self._readiness
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                ctx = state.get("call")
                headers = [*message.get("headers", ()), id_header, _timing(ctx, started)]
                if ctx is not None and (ignored := ctx.trace.ignored_fields) is not None:
                    headers.append((b"x-tandem-ignored-fields", ignored.encode()))
                if readiness is not None and not readiness.ready:
                    headers.append((b"connection", b"close"))
                message["headers"] = headers
            await send(message)

        telemetry = self._telemetry
        door = door_at(scope["path"]) if telemetry is not None else None
        if door is not None:
            telemetry.start()  # type: ignore[union-attr]
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s failed", request_id)
            if not status:
                spelling = spelling_at(scope["path"])
                response = error_response(InternalError("internal error"), spelling=spelling)
                await response(scope, receive, send_with_id)
            status = 500  # whatever the head said, the answer failed
        finally:
            if door is not None:
                self._report(door.name, scope["path"], request_id, state, status, started)

    def _report(
        self,
        protocol: str,
        path: str,
        request_id: str,
        state: dict[str, Any],
        status: int,
        started: float,
    ) -> None:
        """A door request's access line and metrics, once its answer has gone."""
        if self._telemetry is None:
            return
        ctx: CallContext | None = state.get("call")
        if ctx is not None:
            protocol = ctx.protocol  # the path's guess, made sure by the route
            if ctx.trace.error_status is not None:
                status = ctx.trace.error_status  # a stream cut after its 200
        # the transport's own answer to this request (408: its body came too late)
        status = state.get("transport_status") or status
        self._telemetry.finish(
            protocol,
            path,
            request_id,
            status or 499,  # no answer at all: the client went before one
            started,
            ctx,
            server_error=status >= 500,
        )


def _open_scope(scope: Scope, started: float) -> tuple[str, dict[str, Any]]:
    """The request's id, and its state as the handlers read it (deps.py): the id, the
    arrival, the caller's trace context and `anthropic-beta`, off its headers."""
    incoming = traceparent = tracestate = beta = None
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            incoming = value.decode("latin-1")
        elif name == b"traceparent":
            traceparent = value.decode("latin-1")
        elif name == b"tracestate":  # W3C: several headers are one list
            text = value.decode("latin-1")
            tracestate = text if tracestate is None else f"{tracestate},{text}"
        elif name == b"anthropic-beta":  # likewise a list
            text = value.decode("latin-1")
            beta = text if beta is None else f"{beta},{text}"
    request_id = request_id_from(incoming)
    state: dict[str, Any] = scope.setdefault("state", {})
    state["request_id"] = request_id
    state["started"] = started
    state["traceparent"] = traceparent
    state["tracestate"] = tracestate
    state["anthropic_beta"] = beta
    return request_id, state


def _timing(ctx: CallContext | None, started: float) -> tuple[bytes, bytes]:
    gateway_ms = (time.monotonic() - started) * 1000
    upstream_s = ctx.trace.upstream_s if ctx is not None else None
    if upstream_s is None:
        return b"server-timing", f"gateway;dur={gateway_ms:.3f}".encode()
    return b"server-timing", (
        f"gateway;dur={gateway_ms:.3f}, upstream;dur={upstream_s * 1000:.3f}".encode()
    )
