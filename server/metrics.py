"""Prometheus metrics, served at `/metrics` (one registry per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["USAGE_DROPPED", "USAGE_PENDING", "USAGE_WRITE_ERRORS", "USAGE_WRITTEN"]

USAGE_PENDING = Gauge(
    "tandem_usage_pending_records", "Usage records waiting in memory for the store"
)
USAGE_WRITTEN = Counter("tandem_usage_written_records", "Usage records written to the store")
USAGE_WRITE_ERRORS = Counter(
    "tandem_usage_write_errors", "Failed writes of a usage batch (the batch is kept and retried)"
)
USAGE_DROPPED = Counter(
    "tandem_usage_dropped_records", "Usage records dropped because too many were pending"
)
