"""The Prometheus series of `/metrics`: one `Metrics` object per process, built at start.

With `--workers N` the parent points `PROMETHEUS_MULTIPROC_DIR` at an empty
directory before it starts the workers (server/workers.py): prometheus-client
then keeps every value in a file per process, and any worker's scrape reads
them all. The series are never registered on the module's global registry,
so a process may build more than one `Metrics` (tests do).

The `process_*` series (memory, CPU, file descriptors) are summed over the
workers, without labels (server/telemetry/processes.py).

Label values are bounded: `protocol` is a door's, `model` a configured public
name or `""`, `status` an HTTP status or a gRPC code's name, `provider` and
`tier` come from the config.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from server.telemetry.processes import ProcessSeries

__all__ = ["CONTENT_TYPE_LATEST", "MULTIPROC_ENV", "Metrics", "empty_multiprocess_directory"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# seconds; an LLM call runs from milliseconds (a cached or tiny answer) to minutes
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
_GaugeMode = Literal["livesum", "livemin", "livemax"]
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20)


def empty_multiprocess_directory(*, make: bool) -> tuple[Path, bool] | None:
    """Before any worker starts: the operator's `PROMETHEUS_MULTIPROC_DIR`, emptied
    (an earlier run's figures are not this run's), or with `make` a temporary one;
    and whether it is ours to remove. None without either."""
    given = os.environ.get(MULTIPROC_ENV)
    if not given:
        return (Path(tempfile.mkdtemp(prefix="tandem-metrics-")), True) if make else None
    directory = Path(given)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    return directory, False


# what `/metrics` says each series is
_HELP = {
    "tandem_requests": "Requests on the door routes and RPCs, by how they ended",
    "tandem_request_duration_seconds": "From arrival to the last byte of the answer",
    "tandem_time_to_first_token_seconds": (
        "Streams: from arrival to the first chunk from the provider"
    ),
    "tandem_tokens": "Tokens charged, as recorded in the ledger",
    "tandem_cost_usd": "US dollars spent, as recorded in the ledger (the ledger's sums are exact)",
    "tandem_rate_limited": "Requests refused by a rate limit",
    "tandem_budget_exceeded": "Requests refused by a budget (also in tandem_rate_limited)",
    "tandem_upstream_errors": "Failed upstream attempts (each retry and fallback counts)",
    "tandem_inflight_requests": "Door requests being served now",
    "tandem_dependency_up": "1 while a shared dependency answers its background check, else 0",
    "tandem_draining": "1 from SIGTERM on: not ready, finishing what is in flight",
    "tandem_rate_limit_backend_errors": (
        "Calls to the shared rate-limit backend that failed (local limits applied)"
    ),
    "tandem_key_store_lookups": (
        "API key queries that reached the store (the key cache's misses), by result"
    ),
    "tandem_rate_limit_settlements_deferred": (
        "Settlements (and slot releases) Redis did not take: kept, to apply in order"
    ),
    "tandem_rate_limit_settlements_applied_late": (
        "Kept settlements applied once Redis answered again"
    ),
    "tandem_rate_limit_settlements_dropped": (
        "Settlements given up: older than a minute, past the bound, or left at exit"
    ),
    "tandem_usage_pending_records": "Usage records waiting in memory for the store",
    "tandem_usage_written_records": "Usage records written to the store",
    "tandem_usage_write_errors": "Failed writes of a usage batch (the batch is kept and retried)",
    "tandem_usage_dropped_records": "Usage records dropped because too many were pending",
}


class _Series:
    """Declares series on one registry (None: the multiprocess files keep them)."""

    __slots__ = ("registry",)

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.registry = registry

    def counter(self, name: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, _HELP[name], labels, registry=self.registry)

    def gauge(self, name: str, labels: tuple[str, ...] = (), *, mode: _GaugeMode) -> Gauge:
        """`mode`: how the workers' values add up, `live*`: of the workers alive."""
        return Gauge(name, _HELP[name], labels, multiprocess_mode=mode, registry=self.registry)

    def histogram(
        self, name: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> Histogram:
        return Histogram(name, _HELP[name], labels, buckets=buckets, registry=self.registry)


class Metrics:
    """The series, declared by area in the order a scrape lists them (their help in
    `_HELP`)."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` doubles a scrape
        self.multiprocess = MULTIPROC_ENV in os.environ
        self.registry = CollectorRegistry()
        directory = None
        if self.multiprocess:  # the values live in files: the scrape collects them all
            directory = Path(os.environ[MULTIPROC_ENV])
            multiprocess.MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self.registry.register(ProcessSeries(directory))
        series = _Series(None if self.multiprocess else self.registry)
        # calls, by door
        self.requests = series.counter("tandem_requests", ("protocol", "model", "status"))
        self.duration = series.histogram(
            "tandem_request_duration_seconds", ("protocol", "model"), _DURATION_BUCKETS
        )
        self.time_to_first_token = series.histogram(
            "tandem_time_to_first_token_seconds", ("protocol", "model"), _TTFT_BUCKETS
        )
        self.tokens = series.counter("tandem_tokens", ("model", "kind"))
        self.cost = series.counter("tandem_cost_usd", ("model",))
        self.rate_limited = series.counter("tandem_rate_limited", ("tier",))
        self.budget_exceeded = series.counter("tandem_budget_exceeded", ("tier",))
        self.upstream_errors = series.counter("tandem_upstream_errors", ("provider",))
        self.inflight = series.gauge("tandem_inflight_requests", mode="livesum")
        # the process's health
        self.dependency_up = series.gauge("tandem_dependency_up", ("dependency",), mode="livemin")
        self.draining = series.gauge("tandem_draining", mode="livemax")
        # rate limits and API keys
        self.limiter_errors = series.counter("tandem_rate_limit_backend_errors")
        # result: found | unknown | failed, or ids: a read of the key ids created lately
        self.key_lookups = series.counter("tandem_key_store_lookups", ("result",))
        self.settlements_deferred = series.counter("tandem_rate_limit_settlements_deferred")
        self.settlements_applied_late = series.counter("tandem_rate_limit_settlements_applied_late")
        self.settlements_dropped = series.counter("tandem_rate_limit_settlements_dropped")
        # the usage ledger
        self.usage_pending = series.gauge("tandem_usage_pending_records", mode="livesum")
        self.usage_written = series.counter("tandem_usage_written_records")
        self.usage_write_errors = series.counter("tandem_usage_write_errors")
        self.usage_dropped = series.counter("tandem_usage_dropped_records")
        # the labelled children of a call's series, by their labels: `labels()` takes a
        # lock and builds a tuple; a call looks its children up in one dict
        self._call_series: dict[
            tuple[str, str, int | str], tuple[Counter, Histogram, Histogram]
        ] = {}
        self._charged_series: dict[str, tuple[Counter, Counter, Counter]] = {}
        self._rate_limited_series: dict[str, Counter] = {}
        self._budget_exceeded_series: dict[str, Counter] = {}
        self._upstream_error_series: dict[str, Counter] = {}

    def count_rate_limited(self, tier: str) -> None:
        series = self._rate_limited_series.get(tier)
        if series is None:
            series = self._rate_limited_series[tier] = self.rate_limited.labels(tier)
        series.inc()

    def count_budget_exceeded(self, tier: str) -> None:
        series = self._budget_exceeded_series.get(tier)
        if series is None:
            series = self._budget_exceeded_series[tier] = self.budget_exceeded.labels(tier)
        series.inc()

    def count_upstream_error(self, provider: str) -> None:
        series = self._upstream_error_series.get(provider)
        if series is None:
            series = self._upstream_error_series[provider] = self.upstream_errors.labels(provider)
        series.inc()

    def observe_call(
        self,
        protocol: str,
        model: str,
        status: int | str,
        latency_s: float,
        ttft_s: float | None,
        prompt_tokens: int,
        completion_tokens: int,
        cost_nanos: int = 0,
    ) -> None:
        key = (protocol, model, status)
        series = self._call_series.get(key)
        if series is None:
            series = self._call_series[key] = (
                self.requests.labels(protocol, model, str(status)),
                self.duration.labels(protocol, model),
                self.time_to_first_token.labels(protocol, model),
            )
        requests, duration, ttft = series
        requests.inc()
        duration.observe(latency_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        if prompt_tokens or completion_tokens or cost_nanos:  # an unpriced model's spend is 0
            charged = self._charged_series.get(model)
            if charged is None:
                charged = self._charged_series[model] = (
                    self.tokens.labels(model, "prompt"),
                    self.tokens.labels(model, "completion"),
                    self.cost.labels(model),
                )
            charged[0].inc(prompt_tokens)
            charged[1].inc(completion_tokens)
            charged[2].inc(cost_nanos / 1e9)  # a float by nature; the ledger has the nanos

    def render(self) -> bytes:
        return generate_latest(self.registry)
