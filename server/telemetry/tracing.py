"""One OpenTelemetry span per chat or embeddings call, exported over OTLP/gRPC.

Loaded only when `telemetry.otlp_endpoint` is set: without it nothing of
OpenTelemetry is imported and a call pays nothing. Spans leave in batches
from the SDK's own thread (`BatchSpanProcessor`, bounded queue), so a
collector that is down costs a request nothing and fails none; spans that
do not fit the queue are dropped by the SDK.

The span is named `chat <model>` / `embeddings <model>` (the public name),
kind SERVER, child of the caller's `traceparent`, with the GenAI semantic
conventions' attributes. Its own context goes to the upstream as
`traceparent`, with the caller's `tracestate` (`CallTrace`, sent by
server/providers/http_client.py).

No attribute value is longer than `MAX_ATTRIBUTE_CHARS`: the SDK's span limits
cut every string (and each string of a list), and the one list a caller fills,
`stop`, is cut to that many characters in all before it is built. A collector
refuses an export over its message limit (4 MiB by default), losing every
caller's spans in the batch: 20,000 stop sequences copied whole made 18 MB.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Iterable
from typing import Any, TypeVar

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from tandem.v1 import chat_pb2, embeddings_pb2

from server.context import CallContext
from server.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)

__all__ = ["Tracer"]

T = TypeVar("T")
Request = chat_pb2.ChatCompletionRequest | embeddings_pb2.EmbeddingRequest

# the 4xx errors (the caller's) and a caller gone: OpenTelemetry leaves them out of a
# server span's status
_NOT_THE_GATEWAYS = (
    InvalidRequestError,
    AuthenticationError,
    PermissionDeniedError,
    NotFoundError,
    RateLimitError,
    asyncio.CancelledError,
    GeneratorExit,
)
EXPORT_TIMEOUT_S = 5.0
MAX_ATTRIBUTE_CHARS = 1024
SHUTDOWN_TIMEOUT_S = 5.0
_PROPAGATOR = TraceContextTextMapPropagator()

# the request's sampling fields, as the GenAI conventions name them
_SAMPLING = (
    ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"),
    ("top_k", "gen_ai.request.top_k"),
    ("max_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"),
    ("frequency_penalty", "gen_ai.request.frequency_penalty"),
    ("presence_penalty", "gen_ai.request.presence_penalty"),
    ("seed", "gen_ai.request.seed"),
    ("n", "gen_ai.request.choice.count"),
)


def _cut_strings(values: Iterable[str]) -> list[str]:
    """The first of `values`, the last one cut, `MAX_ATTRIBUTE_CHARS` in all."""
    room = MAX_ATTRIBUTE_CHARS
    kept = []
    for value in values:
        if room <= 0:
            break
        kept.append(value[:room])
        room -= len(value) + 1  # an empty string counts too: 20,000 of them are not free
    return kept


class Tracer:
    def __init__(self, endpoint: str, service_name: str) -> None:
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}),
            shutdown_on_exit=False,  # `shutdown` bounds it; an atexit hook would not
            span_limits=SpanLimits(max_attribute_length=MAX_ATTRIBUTE_CHARS),
        )
        exporter = OTLPSpanExporter(
            endpoint=endpoint,
            insecure=not endpoint.startswith("https://"),
            timeout=EXPORT_TIMEOUT_S,
        )
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("tandem")

    def _start(self, operation: str, ctx: CallContext) -> Span:
        parent = None
        if ctx.traceparent:
            carrier = {"traceparent": ctx.traceparent}
            if ctx.tracestate:
                carrier["tracestate"] = ctx.tracestate
            parent = _PROPAGATOR.extract(carrier)
        arrived_ns = time.time_ns() - int((time.monotonic() - ctx.started) * 1e9)
        span = self._tracer.start_span(
            operation, context=parent, kind=SpanKind.SERVER, start_time=arrived_ns
        )
        context = span.get_span_context()
        ctx.trace.traced_as(
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}",
            # the caller's, as the propagator parsed it
            context.trace_state.to_header() if context.trace_state else None,
        )
        return span  # type: ignore[return-value]

    def _end(
        self,
        span: Span,
        operation: str,
        request: Request,
        ctx: CallContext,
        error: BaseException | None,
    ) -> None:
        trace = ctx.trace
        if trace.model:
            span.update_name(f"{operation} {trace.model}")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "tandem.protocol": ctx.protocol,
            "tandem.request_id": ctx.request_id,
        }
        if trace.model:
            attributes["gen_ai.request.model"] = trace.model
        if trace.provider:
            attributes["gen_ai.provider.name"] = trace.provider_kind
            attributes["tandem.provider"] = trace.provider
        if trace.upstream_model:
            attributes["gen_ai.response.model"] = trace.upstream_model
        attributes["gen_ai.usage.input_tokens"] = trace.prompt_tokens
        if operation == "chat":
            attributes["gen_ai.usage.output_tokens"] = trace.completion_tokens
            assert isinstance(request, chat_pb2.ChatCompletionRequest)
            for field, name in _SAMPLING:
                if request.HasField(field):  # type: ignore[arg-type]
                    attributes[name] = getattr(request, field)
            if request.stop:
                attributes["gen_ai.request.stop_sequences"] = _cut_strings(request.stop)
        elif isinstance(request, embeddings_pb2.EmbeddingRequest) and request.HasField(
            "dimensions"
        ):
            attributes["gen_ai.embeddings.dimension.count"] = request.dimensions
        if error is not None:
            if isinstance(error, GatewayError):
                kind = error.type
            elif isinstance(error, asyncio.CancelledError | GeneratorExit):
                kind = "cancelled"  # the caller went away
            else:
                kind = type(error).__name__
            attributes["error.type"] = kind
            # a server span's status is ERROR for the server's failures only: a 4xx
            # (the caller's mistake, or its limit) or a caller gone leaves it unset
            if not isinstance(error, _NOT_THE_GATEWAYS):
                span.set_status(Status(StatusCode.ERROR, kind))
        span.set_attributes(attributes)
        span.end()

    async def stream(
        self, operation: str, request: Request, ctx: CallContext, stream: AsyncGenerator[T, None]
    ) -> AsyncGenerator[T, None]:
        """`stream`, inside the call's span."""
        span = self._start(operation, ctx)
        error: BaseException | None = None
        try:
            async for item in stream:
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            await stream.aclose()
            self._end(span, operation, request, ctx, error)

    async def call(
        self, operation: str, request: Request, ctx: CallContext, call: Awaitable[T]
    ) -> T:
        """`await call`, inside the call's span."""
        span = self._start(operation, ctx)
        error: BaseException | None = None
        try:
            return await call
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end(span, operation, request, ctx, error)

    def shutdown(self) -> None:
        """Export what is left, then stop; blocks for `SHUTDOWN_TIMEOUT_S` at most.

        The SDK's own shutdown waits up to 30 s for its export thread, more with
        a collector that hangs: it runs in a daemon thread given that long, so a
        stuck collector holds the exit `SHUTDOWN_TIMEOUT_S` past the drain, no more.
        """
        stopping = threading.Thread(target=self._provider.shutdown, daemon=True)
        stopping.start()
        stopping.join(SHUTDOWN_TIMEOUT_S)
