"""What operators see: metrics, access logs, traces, readiness. One `Telemetry` per process.

The doors call `start` when a door request arrives and `finish` when its
answer has gone (HTTP: http_bridge/call_scope.py; gRPC: the method wrapper),
so a call is reported in one place with what the core left on its
`CallTrace`: one access line, the call's series, nothing else on the hot path.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from server.config import TelemetryConfig
from server.context import CallContext
from server.telemetry.logs import AccessLine, LogSink
from server.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from server.telemetry.tracing import Tracer

__all__ = ["Metrics", "Telemetry"]


class Telemetry:
    def __init__(self, config: TelemetryConfig, logs: LogSink | None = None) -> None:
        self.metrics = Metrics()
        self._access = logs if config.access_log else None
        self.tracer: Tracer | None = None
        if config.otlp_endpoint:
            from server.telemetry.tracing import Tracer  # OpenTelemetry only when asked for

            self.tracer = Tracer(config.otlp_endpoint, config.service_name)

    def start(self) -> None:
        self.metrics.inflight.inc()

    def finish(
        self,
        protocol: str,
        route: str,
        request_id: str,
        status: int | str,
        started: float,
        ctx: CallContext | None,
        *,
        server_error: bool,
    ) -> None:
        """Report a door call whose answer has gone: `status` is the HTTP status, or
        the gRPC code's name; `ctx` is None for a call refused before it had one."""
        latency_s = time.monotonic() - started
        metrics = self.metrics
        metrics.inflight.dec()
        model = provider = user = ""
        prompt_tokens = completion_tokens = cost_nanos = 0
        ttft_s = None
        if ctx is not None:
            trace = ctx.trace
            model, provider, user = trace.model, trace.provider, ctx.caller.user
            prompt_tokens, completion_tokens = trace.prompt_tokens, trace.completion_tokens
            cost_nanos = trace.cost_nanos
            if trace.first_chunk_at is not None:
                ttft_s = trace.first_chunk_at - started
            if trace.rate_limited:
                metrics.count_rate_limited(ctx.caller.tier)
                if trace.budget_exceeded:
                    metrics.count_budget_exceeded(ctx.caller.tier)
            if trace.failed_attempts:
                for name in trace.failed_attempts:
                    metrics.count_upstream_error(name)
        metrics.observe_call(
            protocol, model, status, latency_s, ttft_s, prompt_tokens, completion_tokens, cost_nanos
        )
        if self._access is not None:
            self._access.put(
                AccessLine(
                    ts=time.time(),
                    level="error" if server_error else "info",
                    request_id=request_id,
                    protocol=protocol,
                    route=route,
                    model=model,
                    provider=provider,
                    user=user,
                    status=status,
                    latency_ms=latency_s * 1000,
                    ttft_ms=None if ttft_s is None else ttft_s * 1000,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    cost_nanos=cost_nanos,
                )
            )

    def shutdown(self) -> None:
        """Flush what is buffered (spans); blocks, so run it off the loop."""
        if self.tracer is not None:
            self.tracer.shutdown()
