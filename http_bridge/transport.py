"""The HTTP/1.1 connection: uvicorn's httptools protocol, with bounds on what a client may hold.

Neither httptools nor uvicorn bounds the size of a request head or the time a
client takes to send it: one connection could make the server buffer a 32 MB
header, or hold it open with one header line a second. The `server.*` keys:

- `max_header_bytes`, the request line and headers together. A request's bytes
  are counted as they arrive, before the parser sees them, until its headers
  end. A read that crosses the limit is parsed only up to it; if the headers
  did not end there, the client gets 431 (native body, code
  `headers_too_large`, a new `x-request-id`, `connection: close`) and the
  connection closes, the rest unread. (A request that begins inside the read
  that ended the one before it is counted from its next read.)
- `header_timeout_s`, from a request's first byte to the end of its headers;
  past it the connection closes without an answer (slowloris).
- `body_timeout_s`, from the end of the headers to the last body byte: a
  total, so a body that trickles in a byte at a time is cut too. Time while
  the server itself is not reading (back-pressure on a handler that has not
  read yet, a pipelined request waiting its turn) does not count. Past it, a
  handler waiting for the body sees the client gone, the client gets 408
  (native body, code `body_timeout`) unless an answer had started, and the
  connection closes.
- `keep_alive_timeout_s`, an idle connection: before its first byte (uvicorn
  leaves a fresh connection unbounded) and between requests (uvicorn's own).
- `write_timeout_s`, an answer the client does not read: once bytes wait
  to be written (the transport paused the writer, or an answer ended with
  bytes unsent), the connection is watched; if nothing of what waits, in
  our buffer or the kernel's, leaves for that long, the connection is
  aborted. A stream's handler then sees the client gone (its upstream call
  is cancelled and charged as `cancelled`). Progress, not the total time,
  is measured: a client that reads slowly but steadily is never cut. (A
  stream never runs ahead of its reader: uvicorn's `send` waits while the
  transport is paused, so the producer stops pulling from the upstream.)
- `max_connections`, per worker process: a connection over it is served
  `/healthz` and `/readyz` (so a full worker is not restarted by its own
  probes) and answered 503 (`unavailable_error`, code
  `too_many_connections`, `retry-after: 1`) on any other path; either way
  under the same bounds, with `connection: close`, and closed.

Of uvicorn, `Config(http=...)` (this protocol class) and
`Config(timeout_keep_alive=...)` are public; the rest this drives is not, so
uvicorn is pinned exactly and tests/unit/test_uvicorn_internals.py checks, in
process, each piece used here and in server/lifecycle.py.

At shutdown, `cut_by_drain` aborts a connection whose answer outlived the
grace: its request is reported as 503, and its handler sees the client
gone, so no task is cancelled under uvicorn (which would log a traceback).

The hot path pays a counter add and compare per read while a head is
incomplete, two clock reads and a write-buffer size per request: one lazily
re-armed timer per connection stands for the deadlines, not a timer per
request; the write watch costs nothing until a writer is paused. The answers the
transport writes itself (431, 408, 503) reach the metrics and the access log
like any other: an operator sees a client sending 40 KB of cookies, or a
worker out of connections.
"""

from __future__ import annotations

import asyncio
import http
import math
import time
from typing import Any, ClassVar

import orjson
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from http_bridge.call_scope import CallScopeMiddleware
from http_bridge.doors import protocol_at
from http_bridge.errors import openai_error_body
from http_bridge.kernel import reset, unsent_in_kernel
from http_bridge.over_capacity import ProbesOnly, over_capacity_app
from server.config import ServerConfig
from server.context import new_id
from server.errors import GatewayError, InvalidRequestError
from server.telemetry import Telemetry

__all__ = ["GuardedHttpToolsProtocol", "guarded_protocol"]

WRITE_CHECKS = 4  # looks per `write_timeout_s` at bytes waiting: a stall is cut within 1.5x it


def _error_body(error: GatewayError) -> bytes:
    return orjson.dumps(openai_error_body(error))


def _closing_answer(
    status: int, body: bytes, request_id: str, default_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A whole JSON answer written by the transport itself, then the connection closes."""
    parts = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n".encode()]
    for name, value in default_headers:
        parts += [name, b": ", value, b"\r\n"]
    parts += [
        b"content-type: application/json\r\ncontent-length: ",
        str(len(body)).encode(),
        b"\r\nx-request-id: ",
        request_id.encode(),
        b"\r\nconnection: close\r\n\r\n",
        body,
    ]
    return b"".join(parts)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One connection; `guarded_protocol` makes the subclass that carries the limits."""

    # Slots, not the instance dict: uvicorn's ~28 attributes already fill it near
    # CPython's 30 shared keys, past which every attribute access in uvicorn's
    # code gets slower (measured: +4% instructions per request in the protocol).
    __slots__ = (
        "_answered",
        "_body_timeout_s",
        "_deadline",
        "_draining",
        "_header_bytes",
        "_header_timeout_s",
        "_in_head",
        "_max_header_bytes",
        "_timer",
        "_timer_at",
        "_unsent",
        "_unsent_moved_at",
        "_write_timer",
    )

    limits: ClassVar[ServerConfig]
    telemetry: ClassVar[Telemetry | None]
    over_capacity: ClassVar[CallScopeMiddleware]
    headers_too_large: ClassVar[bytes]  # the 431 body
    body_timed_out: ClassVar[bytes]  # the 408 body

    def __init__(
        self,
        config: UvicornConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.limits
        self._max_header_bytes = limits.max_header_bytes
        self._header_timeout_s = limits.header_timeout_s
        self._body_timeout_s = limits.body_timeout_s
        self._in_head = True  # the bytes arriving belong to a request's head
        self._header_bytes = 0
        self._deadline = 0.0  # of the head or the body being read; 0: none
        self._answered = False  # an answer went out on it: a new one is not a balancer's
        self._draining = False  # kept open by the drain for one request, then closed
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # when the timer fires; inf: no timer
        self._write_timer: asyncio.TimerHandle | None = None  # armed while bytes wait
        self._unsent: float = math.inf  # bytes waiting at the last look; inf: they moved since
        self._unsent_moved_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.app = ProbesOnly(self.app, self.over_capacity)
        # uvicorn arms the keep-alive only between requests: before the first byte too
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    # The hot path: direct base-class calls (no super()) and one compare for the timer.
    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if not self._header_bytes:
                deadline = self._deadline = self.loop.time() + self._header_timeout_s
                if deadline < self._timer_at:
                    self._arm(deadline)
            self._header_bytes += len(data)
            if self._header_bytes > self._max_header_bytes:
                self._receive_past_header_budget(data)
                return
        HttpToolsProtocol.data_received(self, data)

    def _receive_past_header_budget(self, data: bytes) -> None:
        """Parse up to the limit; refuse if the head did not end within it."""
        within = len(data) - (self._header_bytes - self._max_header_bytes)
        if within > 0:
            HttpToolsProtocol.data_received(self, data[:within])
            if self.transport.is_closing():  # a parse error, answered by uvicorn
                return
        if self._in_head and self._header_bytes > self._max_header_bytes:
            request_id = new_id()
            self._close_with(431, self.headers_too_large, request_id)
            # no app has this request: reported here, from the head's first byte (the
            # loop's clock is monotonic too, but cached: never later than now)
            started = min(self._deadline - self._header_timeout_s, time.monotonic())
            self._report(431, request_id, started)
        elif rest := data[within:]:
            self.data_received(rest)  # the body, or the next request's head

    def on_headers_complete(self) -> None:
        self._in_head = False
        deadline = self._deadline = self.loop.time() + self._body_timeout_s
        if deadline < self._timer_at:
            self._arm(deadline)
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        self._in_head = True
        self._header_bytes = 0
        self._deadline = 0.0

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)
        self._answered = True
        if self._draining:
            self.transport.close()
        if self.transport.get_write_buffer_size():  # an answer's end waits to be written
            self._watch_writes()

    def pause_writing(self) -> None:
        HttpToolsProtocol.pause_writing(self)
        self._watch_writes()

    def resume_writing(self) -> None:
        HttpToolsProtocol.resume_writing(self)
        self._unsent = math.inf  # bytes left: progress, whatever waits at the next look

    def _watch_writes(self) -> None:
        if self._write_timer is None:
            self._unsent = math.inf
            self._write_timer = self.loop.call_later(
                self.limits.write_timeout_s / WRITE_CHECKS, self._check_writes
            )

    def _check_writes(self) -> None:
        """Every quarter of `write_timeout_s` while bytes wait: abort the connection
        once none of them has left for `write_timeout_s`."""
        self._write_timer = None
        transport = self.transport
        waiting = transport.get_write_buffer_size()
        if not waiting and not self.flow.write_paused:
            return  # all handed to the kernel: the reader kept up
        waiting += unsent_in_kernel(transport)
        now = self.loop.time()
        if waiting < self._unsent:
            self._unsent = waiting
            self._unsent_moved_at = now
        elif now - self._unsent_moved_at >= self.limits.write_timeout_s:
            reset(transport)
            return
        self._write_timer = self.loop.call_later(
            self.limits.write_timeout_s / WRITE_CHECKS, self._check_writes
        )

    def shutdown(self) -> None:
        """The drain begins. uvicorn closes at once every connection with no request in
        its app; but a balancer sends its request the moment its connection opens, and
        one that nginx sent, or began to send, on a connection closed under it comes
        back as nginx's 502 (a POST sent is never sent twice). So a connection that
        never had an answer, or whose next head has begun, keeps its head's deadline
        (`header_timeout_s`, from now if no byte came yet): its request is served, with
        `connection: close` (the replica is not ready), and the connection closes after
        it, or at the deadline.
        An idle kept-alive connection closes at once, as in uvicorn."""
        cycle = self.cycle  # uvicorn keeps the last one, answered, between requests
        idle = cycle is None or cycle.response_complete
        if idle and (self._header_bytes or not self._answered):
            self._draining = True
            if not self._header_bytes:
                self._deadline = self.loop.time() + self._header_timeout_s
                self._arm(self._deadline)
            return
        HttpToolsProtocol.shutdown(self)

    def cut_by_drain(self) -> None:
        """The shutdown grace is over: abort the connection; an answer still going
        is reported as 503 (the handler sees its client gone)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.scope.setdefault("state", {})["transport_status"] = 503
        self.transport.abort()

    def _arm(self, at: float) -> None:
        """One timer for the connection: it fires at `at` and looks at the deadline then."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(at, self._on_timer)
        self._timer_at = at

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        if not self._deadline or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the server is not reading: the client is not late
            self._deadline = now + (
                self._header_timeout_s if self._in_head else self._body_timeout_s
            )
        if self._deadline > now:
            self._arm(self._deadline)
        elif self._in_head:
            self.transport.close()
        else:
            self._cut_body()

    def _cut_body(self) -> None:
        cycle = self.cycle
        answer = not cycle.response_started
        cycle.disconnected = True  # the handler's receive() sees the client gone
        cycle.message_event.set()
        if answer:
            state = cycle.scope.setdefault("state", {})
            state["transport_status"] = 408  # what the call scope reports (the app is still in)
            self._close_with(408, self.body_timed_out, state.get("request_id") or new_id())
        else:
            self.transport.close()

    def _close_with(self, status: int, body: bytes, request_id: str) -> None:
        headers = self.server_state.default_headers
        self.transport.write(_closing_answer(status, body, request_id, headers))
        self.transport.close()

    def _report(self, status: int, request_id: str, started: float) -> None:
        if self.telemetry is not None:
            # the path, if the request line got that far (bounded by the head's limit)
            url: bytes = getattr(self, "url", b"")
            path = url.partition(b"?")[0].decode("latin-1")
            self.telemetry.start()
            self.telemetry.finish(
                protocol_at(path) or "http",
                path,
                request_id,
                status,
                started,
                None,
                server_error=False,
            )


def guarded_protocol(
    limits: ServerConfig, telemetry: Telemetry | None = None
) -> type[HttpToolsProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, bound to these limits, that
    reports its own answers to `telemetry`."""

    class HttpProtocol(GuardedHttpToolsProtocol):
        pass

    HttpProtocol.limits = limits
    HttpProtocol.telemetry = telemetry
    HttpProtocol.over_capacity = over_capacity_app(limits.max_connections, telemetry)
    HttpProtocol.headers_too_large = _error_body(
        InvalidRequestError(
            f"request line and headers are larger than the limit of "
            f"{limits.max_header_bytes} bytes",
            code="headers_too_large",
        )
    )
    HttpProtocol.body_timed_out = _error_body(
        InvalidRequestError(
            f"request body not received within {limits.body_timeout_s:g} s", code="body_timeout"
        )
    )
    return HttpProtocol
