"""The gRPC door: thin servicers that hand every call to the data plane.

Every method goes through one wrapper (`unary_rpc` / `stream_rpc`): it reads
the request id, credentials, `traceparent` and `anthropic-beta` from metadata,
asks the policy who the caller is, builds the `CallContext`, turns errors into
statuses with details, and reports the call once it ended (server/telemetry).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tandem.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    embeddings_pb2,
    embeddings_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

from server.chunks import Batch, Chunk, stamped
from server.context import CallContext, request_id_from
from server.core.dataplane import DataPlane
from server.drain import DrainClock
from server.errors import GatewayError, InternalError, InvalidRequestError, UnavailableError
from server.grpc_decode import UndecodableRequest, add_service
from server.grpc_errors import to_grpc_status
from server.policy import Policy
from server.telemetry import Telemetry
from server.translate.common import check_schema_texts

__all__ = ["SERVICE_NAMES", "build_grpc_server"]

logger = logging.getLogger("tandem.grpc")

_DESCRIPTORS = {
    name: module.DESCRIPTOR.services_by_name[name]
    for module, name in (
        (chat_pb2, "ChatService"),
        (models_pb2, "ModelService"),
        (embeddings_pb2, "EmbeddingService"),
        (usage_pb2, "UsageService"),
    )
}
SERVICE_NAMES = tuple(service.full_name for service in _DESCRIPTORS.values())

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]


class _Door:
    """What every servicer shares: the data plane, the policy, and call set-up."""

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

    async def open(self, door: _Door, context: Context) -> CallContext:
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

    def finish(self, door: _Door, method: str) -> None:
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


async def _abort(door: _Door, context: Context, error: BaseException, call: _Call) -> None:
    if not isinstance(error, GatewayError):
        logger.error("request %s failed", call.request_id or "-", exc_info=error)
        error = InternalError("internal error")
    status = to_grpc_status(error)
    call.status = status.code
    await call.send_head(context)
    trailers = tuple(status.trailing_metadata)
    if call.ctx is not None:  # authenticated: the rate-limit trailers ride on errors too
        trailers += await _limit_trailers(door, call.ctx)
    await context.abort(status.code, status.details, trailers)


def _method_name(door: _Door, handler: Callable[..., Any]) -> str:
    return f"/{_DESCRIPTORS[type(door).__name__].full_name}/{handler.__name__}"


async def _limit_trailers(door: _Door, ctx: CallContext) -> tuple[tuple[str, str], ...]:
    """The call's x-ratelimit-* trailers, the one place this door reads them: as the
    admission left them, or the budget as it stands for a call refused before it."""
    await door.policy.add_headers(ctx)
    return tuple(ctx.response_headers)


def unary_rpc(
    handler: Callable[[Any, Req, CallContext], Awaitable[Resp]],
) -> Callable[[Any, Req | UndecodableRequest, Context], Awaitable[Resp]]:
    name = ""  # the full method name, known once the servicer class is

    @functools.wraps(handler)
    async def method(self: _Door, request: Req | UndecodableRequest, context: Context) -> Resp:
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


def _gone(door: _Door, context: Context) -> grpc.StatusCode:
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
        self: _Door, request: Req | UndecodableRequest, context: Context
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


class ChatService(_Door, chat_pb2_grpc.ChatServiceServicer):
    @unary_rpc
    async def CreateChatCompletion(
        self, request: chat_pb2.ChatCompletionRequest, ctx: CallContext
    ) -> chat_pb2.ChatCompletion:
        check_schema_texts(request)
        return await self.plane.create_chat(request, ctx)

    @stream_rpc
    def StreamChatCompletion(
        self, request: chat_pb2.ChatCompletionRequest, ctx: CallContext
    ) -> AsyncGenerator[list[Chunk], None]:
        check_schema_texts(request)
        return _whole_chunks(self.plane.stream_chat(request, ctx))


async def _whole_chunks(
    batches: AsyncGenerator[Batch, None],
) -> AsyncGenerator[list[Chunk], None]:
    """Every text item as the whole chunk it stands for (server/chunks.py): gRPC sends
    each with the id, time and model of the first, which is always a chunk."""
    head: Chunk | None = None
    try:
        async for batch in batches:
            if head is None:
                first = batch[0]
                assert not isinstance(first, str)
                head = first
            yield [stamped(item, head) if isinstance(item, str) else item for item in batch]
    finally:
        await batches.aclose()


class ModelService(_Door, models_pb2_grpc.ModelServiceServicer):
    @unary_rpc
    async def ListModels(
        self, request: models_pb2.ListModelsRequest, ctx: CallContext
    ) -> models_pb2.ListModelsResponse:
        return await self.plane.list_models(ctx)

    @unary_rpc
    async def GetModel(
        self, request: models_pb2.GetModelRequest, ctx: CallContext
    ) -> models_pb2.Model:
        return await self.plane.get_model(request.id, ctx)


class EmbeddingService(_Door, embeddings_pb2_grpc.EmbeddingServiceServicer):
    @unary_rpc
    async def CreateEmbeddings(
        self, request: embeddings_pb2.EmbeddingRequest, ctx: CallContext
    ) -> embeddings_pb2.EmbeddingResponse:
        return await self.plane.embed(request, ctx)


class UsageService(_Door, usage_pb2_grpc.UsageServiceServicer):
    @unary_rpc
    async def GetUsage(
        self, request: usage_pb2.GetUsageRequest, ctx: CallContext
    ) -> usage_pb2.GetUsageResponse:
        return await self.plane.get_usage(request, ctx)


def build_grpc_server(
    plane: DataPlane,
    policy: Policy,
    health_servicer: health.aio.HealthServicer,
    telemetry: Telemetry,
    *,
    max_message_bytes: int,
    max_concurrent_rpcs: int,
    reuse_port: bool = False,
    drain: DrainClock | None = None,
    write_timeout_s: float = 30.0,
) -> grpc.aio.Server:
    """A grpc.aio server with every service, health and reflection; not yet bound.

    `max_message_bytes` bounds the messages that come in; answers are not capped.
    A call cancelled once `drain` is over is reported UNAVAILABLE.
    """
    drain = drain or DrainClock()
    options: Sequence[tuple[str, Any]] = (
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),  # the limit is for what comes in
        ("grpc.so_reuseport", int(reuse_port)),
    )
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_concurrent_rpcs)
    for servicer in (ChatService, ModelService, EmbeddingService, UsageService):
        add_service(
            server,
            _DESCRIPTORS[servicer.__name__],
            servicer(plane, policy, telemetry, drain, write_timeout_s),
        )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return server
