"""Warnings that callers cause, written at most once a minute per kind.

A caller can make the gateway warn on every request: a malformed `tracestate`
(OpenTelemetry's propagator says so, with the caller's text), an HTTP request
that does not parse (uvicorn). Written each time, one client fills the log and
hides the lines an operator needs. So the first of a kind is written, the rest
of that minute are counted, and the next one written says how many were left
out. A kind is the logger and the message's format, never the caller's text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["CALLER_CAUSED_LOGGERS", "CallerWarnings"]

# the loggers whose warnings a request can cause, with their children
CALLER_CAUSED_LOGGERS = (
    "opentelemetry.trace",  # parsing `traceparent` and `tracestate`
    "opentelemetry.attributes",  # a span attribute cut to its limit
    "uvicorn.error",  # "Invalid HTTP request received."
)
INTERVAL_S = 60.0
MAX_KINDS = 1024  # kinds are the code's format strings; a bound all the same
MAX_KIND_CHARS = 256


class CallerWarnings(logging.Filter):
    """A filter for the log handler: each kind of caller-caused warning once per
    `interval_s`, the next one written carrying the count of those left out."""

    def __init__(
        self, interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._kinds: dict[tuple[str, str], tuple[float, int]] = {}  # -> (written at, left out)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not record.name.startswith(CALLER_CAUSED_LOGGERS):
            return True
        kind = (record.name, str(record.msg)[:MAX_KIND_CHARS])
        now = self._clock()
        written = self._kinds.get(kind)
        if written is not None and now - written[0] < self._interval_s:
            self._kinds[kind] = (written[0], written[1] + 1)
            return False
        if len(self._kinds) >= MAX_KINDS:
            self._kinds.clear()
        self._kinds[kind] = (now, 0)
        if written is not None and written[1]:
            record.msg = f"{record.msg} ({written[1]} more like this left out since the last)"
        return True
