"""The one wrapper every gRPC method goes through (`unary_rpc` / `stream_rpc`).

It reads the request id, credentials, `traceparent` and `anthropic-beta` from
metadata, asks the policy who the caller is, builds the `CallContext`, turns
errors into statuses with details, and reports the call once it ended
(server/telemetry). A servicer method is then one line (services.py).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from types import ModuleType
from typing import Any, ClassVar, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from server.context import CallContext, request_id_from
from server.core.dataplane import DataPlane
from server.drain import DrainClock
from server.errors import GatewayError, InternalError, InvalidRequestError, UnavailableError
from server.grpc_door.decode import UndecodableRequest
from server.grpc_door.errors import retry_trailers, to_grpc_status
from server.policy import Policy
from server.telemetry import Telemetry

__all__ = ["Servicer", "stream_rpc", "unary_rpc"]

logger = logging.getLogger("tandem.grpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]


class Servicer:
    """What every servicer shares: the data plane, the policy, and call set-up. A
    servicer names the proto module of its service (`proto=`), whose descriptor of the
    service of its own name gives its methods' full names and its registration."""

    descriptor: ClassVar[ServiceDescriptor]

    def __init_subclass__(cls, *, proto: ModuleType, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.descriptor = proto.DESCRIPTOR.services_by_name[cls.__name__]

    def __init__(
        self,
        plane: DataPlane,
        policy: Policy,
        telemetry: Telemetry,
        drain: DrainClock,
        write_timeout_s: float = 30.0,
    ) -> None:
        self.plane = plane
        self.policy = policy
        self.telemetry = telemetry
        self.drain = drain
        self.write_timeout_s = write_timeout_s


class _Call:
    """One RPC from its arrival: its id, and its context once the caller is known.

    The initial metadata leaves with the answer's head (its first message, or its
    error), once what the upstream left out is known: `x-request-id`, and
    `x-tandem-ignored-fields` where the upstream left fields out."""

    __slots__ = ("ctx", "head_sent", "request_id", "started", "status")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.ctx: CallContext | None = None
        self.request_id = ""
        self.status = grpc.StatusCode.OK
        self.head_sent = False

    async def open(self, door: Servicer, context: Context) -> CallContext:
        request_id = authorization = traceparent = tracestate = beta = None
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id":
                request_id = value
            elif key == "authorization":
                authorization = value
            elif key == "traceparent":
                traceparent = value
            elif key == "tracestate":
                tracestate = value
            elif key == "anthropic-beta":  # a list: several entries are one
                text = _text(value)
                beta = text if beta is None else f"{beta},{text}"
        self.request_id = request_id_from(_text(request_id))
        caller = await door.policy.authenticate(_text(authorization))
        remaining = context.time_remaining()
        self.ctx = CallContext(
            request_id=self.request_id,
            protocol="grpc",
            caller=caller,
            deadline=None if remaining is None else self.started + remaining,
            started=self.started,
            traceparent=_text(traceparent),
            tracestate=_text(tracestate),
            anthropic_beta=beta,
        )
        return self.ctx

    async def send_head(self, context: Context) -> None:
        """The initial metadata, once."""
        if self.head_sent:
            return
        self.head_sent = True
        metadata = [("x-request-id", self.request_id)]
        if self.ctx is not None and (ignored := self.ctx.trace.ignored_fields) is not None:
            metadata.append(("x-tandem-ignored-fields", ignored))
        await context.send_initial_metadata(metadata)

    def finish(self, door: Servicer, method: str) -> None:
        status = self.status
        door.telemetry.finish(
            "grpc",
            method,
            self.request_id or "-",
            status.name,
            self.started,
            self.ctx,
            server_error=status in _SERVER_ERRORS,
        )


_SERVER_ERRORS = frozenset(
    (
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
    )
)


def _decoded(request: Req | UndecodableRequest) -> Req:
    """The request, or the InvalidRequestError of one that did not parse."""
    if isinstance(request, UndecodableRequest):
        raise InvalidRequestError(request.message, param=request.field)
    return request


def _text(value: str | bytes | None) -> str | None:
    return value.decode("latin-1") if isinstance(value, bytes) else value


async def _abort(door: Servicer, context: Context, error: BaseException, call: _Call) -> None:
    if not isinstance(error, GatewayError):
        logger.error("request %s failed", call.request_id or "-", exc_info=error)
        error = InternalError("internal error")
    status = to_grpc_status(error)
    call.status = status.code
    await call.send_head(context)
    trailers = (*status.trailing_metadata, *retry_trailers(error))
    if call.ctx is not None:  # authenticated: the rate-limit trailers ride on errors too
        trailers += await _limit_trailers(door, call.ctx)
    await context.abort(status.code, status.details, trailers)


def _method_name(door: Servicer, handler: Callable[..., Any]) -> str:
    return f"/{type(door).descriptor.full_name}/{handler.__name__}"


async def _limit_trailers(door: Servicer, ctx: CallContext) -> tuple[tuple[str, str], ...]:
    """The call's x-ratelimit-* trailers, the one place this door reads them: as the
    admission left them, or the budget as it stands for a call refused before it."""
    await door.policy.add_headers(ctx)
    return tuple(ctx.response_headers)


def unary_rpc(
    handler: Callable[[Any, Req, CallContext], Awaitable[Resp]],
) -> Callable[[Any, Req | UndecodableRequest, Context], Awaitable[Resp]]:
    name = ""  # the full method name, known once the servicer class is

    @functools.wraps(handler)
    async def method(self: Servicer, request: Req | UndecodableRequest, context: Context) -> Resp:
        nonlocal name
        name = name or _method_name(self, handler)
        self.telemetry.start()
        call = _Call()
        try:
            ctx = await call.open(self, context)
            response = await handler(self, _decoded(request), ctx)
            await call.send_head(context)
            if trailers := await _limit_trailers(self, ctx):
                context.set_trailing_metadata(trailers)
            return response
        except Exception as exc:
            await _abort(self, context, exc, call)
            raise AssertionError("abort returned") from exc
        except BaseException:
            call.status = _gone(self, context)
            raise
        finally:
            call.finish(self, name)

    return method


def _gone(door: Servicer, context: Context) -> grpc.StatusCode:
    """Why grpc cancelled a handler: the drain's grace ended, its deadline passed,
    or the caller went away."""
    if door.drain.over:
        return grpc.StatusCode.UNAVAILABLE
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def stream_rpc(
    handler: Callable[[Any, Req, CallContext], AsyncGenerator[list[Resp], None]],
) -> Callable[[Any, Req | UndecodableRequest, Context], AsyncIterator[Resp]]:
    """A streaming method: the handler yields lists of messages (what one upstream
    read brought); each message is one gRPC message."""
    name = ""  # the full method name, known once the servicer class is

    @functools.wraps(handler)
    async def method(
        self: Servicer, request: Req | UndecodableRequest, context: Context
    ) -> AsyncIterator[Resp]:
        nonlocal name
        name = name or _method_name(self, handler)
        self.telemetry.start()
        call = _Call()
        stream = None
        watch = None
        try:
            ctx = await call.open(self, context)
            stream = handler(self, _decoded(request), ctx)
            watch = _WriteWatch(stream, self.write_timeout_s)
            async for batch in stream:
                if not call.head_sent:
                    await call.send_head(context)
                for item in batch:
                    watch.writing = True  # grpc takes the next message once this one is sent
                    yield item
                    watch.writing = False
                    watch.sent += 1
            if watch.cut:
                raise _write_timed_out()
            if trailers := await _limit_trailers(self, ctx):
                context.set_trailing_metadata(trailers)
        except Exception as exc:
            await _abort(self, context, exc, call)
        except BaseException:
            call.status = _gone(self, context)
            raise
        finally:
            if watch is not None:
                watch.stop()
            if watch is not None and watch.closing is not None:
                await watch.closing  # never a second aclose while the watch's runs
            elif stream is not None:
                await stream.aclose()
            call.finish(self, name)

    return method


class _WriteWatch:
    """`server.write_timeout_s` for a gRPC stream: a message the client does not take
    (HTTP/2 flow control holds it) for that long ends the call. The data plane's stream
    is closed at once (its upstream cancelled, `cancelled` charged, its slot given back)
    and the handler's task cancelled, so grpc ends the RPC. Progress, not time: a slow
    but steady reader is never cut. Costs two stores a message and a timer a call."""

    __slots__ = (
        "_handle",
        "_loop",
        "_seen",
        "_stream",
        "_task",
        "_timeout_s",
        "closing",
        "cut",
        "sent",
        "writing",
    )

    def __init__(self, stream: AsyncGenerator[Any, None], timeout_s: float) -> None:
        self._stream = stream
        self._timeout_s = timeout_s
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self.writing = False
        self.cut = False
        self.closing: asyncio.Task[None] | None = None  # the stream's aclose, once cut
        self.sent = 0
        self._seen = -1
        self._handle = self._loop.call_later(timeout_s, self._check)

    def _check(self) -> None:
        if self.writing and self.sent == self._seen:  # stuck on one message a whole timeout
            self.cut = True
            self.closing = self._loop.create_task(self._stream.aclose())
            if self._task is not None:
                self._task.cancel()
            return
        self._seen = self.sent
        self._handle = self._loop.call_later(self._timeout_s, self._check)

    def stop(self) -> None:
        self._handle.cancel()


def _write_timed_out() -> GatewayError:
    return UnavailableError("the client read nothing for server.write_timeout_s")
