"""Logs on stderr, JSON lines by default (`text` by option), written by a thread of their own.

A request pays for one `append` of a tuple to a deque. The thread wakes every
`FLUSH_INTERVAL_S`, not per line (a queue that woke it per line cost a GIL
hand-off a request), formats what has queued up and writes it in a few
writes. A slow or stuck stderr never blocks the loop: past
`MAX_QUEUED` lines, new ones are dropped, and the thread says how many once
it catches up. Every other log record goes
through the same queue, formatted as it is emitted (they are rare), so with
`json` every stderr line is JSON.

Access lines carry what the contract lists and nothing else: never a key, a
token, a prompt or a completion. Any other line may carry a caller's text (a
`tracestate` member, an exception's message): each argument of a message and
each line of a traceback is cut to `ECHO_LIMIT` (256) characters, and the
warnings callers cause are rate-limited (caller_warnings.py).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections import deque
from typing import IO, Literal, NamedTuple

import orjson

from server.errors import echoed
from server.telemetry.caller_warnings import CallerWarnings
from server.usage.money import nanos_text

__all__ = ["AccessLine", "LogFormat", "LogSink", "configure_logging"]

LogFormat = Literal["json", "text"]

MAX_QUEUED = 10_000
MAX_ROUTE_CHARS = 256  # a path is the caller's to choose: it is cut, not trusted
FLUSH_INTERVAL_S = 0.05
# one write at most this long (bytes, for ASCII lines): workers share a stderr pipe,
# and a pipe keeps a write whole only up to PIPE_BUF (4096 on Linux)
MAX_WRITE = 4096


class AccessLine(NamedTuple):
    """One request's access line, as the door hands it to the sink (formatted later)."""

    ts: float  # wall clock, seconds
    level: str
    request_id: str
    protocol: str
    route: str
    model: str
    provider: str
    user: str
    status: int | str  # the HTTP status, or the gRPC code's name
    latency_ms: float
    ttft_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_nanos: int = 0  # written as `cost_usd`, an exact number of US dollars


def _timestamp(wall: float) -> str:
    """RFC 3339 in UTC, to the millisecond."""
    seconds = int(wall)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (
        f".{int((wall - seconds) * 1000):03d}Z"
    )


def _text_value(value: object) -> str:
    if value is None:
        return "-"
    text = str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return orjson.dumps(text).decode()
    return text


class LogSink:
    """The queue and the thread that write every log line to `stream`."""

    def __init__(self, log_format: LogFormat = "json", stream: IO[str] | None = None) -> None:
        self.format: LogFormat = log_format
        self._stream = stream if stream is not None else sys.stderr
        self._queue: deque[str | AccessLine] = deque()  # append and popleft are atomic
        self._dropped = 0  # only the callers add
        self._reported = 0  # only the writer thread moves it
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tandem-logs", daemon=True)
        self._thread.start()

    def put(self, item: str | AccessLine) -> None:
        """Queue a formatted line, or an access line to format; never blocks."""
        if len(self._queue) >= MAX_QUEUED:
            self._dropped += 1
            return
        self._queue.append(item)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then stop the thread."""
        self._closing.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        queued = self._queue
        while True:
            closing = self._closing.wait(FLUSH_INTERVAL_S)
            lines = [self._safe_line(queued.popleft()) for _ in range(len(queued))]
            if self._dropped != self._reported:
                dropped = self._dropped - self._reported
                self._reported += dropped
                lines.append(
                    self.record_line(
                        time.time(),
                        "warning",
                        "tandem.logs",
                        f"{dropped} log lines dropped: stderr did not keep up",
                    )
                )
            self._write(lines)
            if closing:
                return

    def _write(self, lines: list[str]) -> None:
        """Whole lines, in writes of at most `MAX_WRITE` (a longer line alone)."""
        chunk: list[str] = []
        size = 0
        for line in [*lines, ""]:
            if chunk and (not line or size + len(line) > MAX_WRITE):
                try:
                    self._stream.write("".join(chunk))
                    self._stream.flush()
                except (OSError, ValueError):  # stderr closed or gone: nothing else to tell
                    return
                chunk, size = [], 0
            chunk.append(line)
            size += len(line)

    def _safe_line(self, item: str | AccessLine) -> str:
        """The line, or its text made valid UTF-8 (a JWT's `sub` may carry a lone
        surrogate, which neither orjson nor stderr takes)."""
        try:
            return self._line(item).encode("utf-8").decode()
        except (TypeError, ValueError):
            pass
        if isinstance(item, str):
            return _utf8(item)
        return self._line(
            AccessLine._make(_utf8(value) if isinstance(value, str) else value for value in item)
        )

    def _line(self, item: str | AccessLine) -> str:
        if isinstance(item, str):
            return item
        fields: dict[str, object] = item._asdict()
        fields["ts"] = _timestamp(item.ts)
        fields["route"] = item.route[:MAX_ROUTE_CHARS]
        fields["latency_ms"] = round(item.latency_ms, 3)
        if item.ttft_ms is not None:
            fields["ttft_ms"] = round(item.ttft_ms, 3)
        del fields["cost_nanos"]
        cost = nanos_text(item.cost_nanos) if item.cost_nanos else "0"  # most calls
        fields["cost_usd"] = orjson.Fragment(cost) if self.format == "json" else cost
        if self.format == "json":
            ts, level = fields.pop("ts"), fields.pop("level")
            line = {"ts": ts, "level": level, "event": "request", **fields}
            return orjson.dumps(line).decode() + "\n"
        ts, level = fields.pop("ts"), fields.pop("level")
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        return f"{ts} {level} request {pairs}\n"

    def record_line(
        self, wall: float, level: str, logger: str, message: str, exception: str | None = None
    ) -> str:
        if self.format == "json":
            line: dict[str, str] = {
                "ts": _timestamp(wall),
                "level": level,
                "logger": logger,
                "message": message,
            }
            if exception:
                line["exception"] = exception
            return orjson.dumps(line).decode() + "\n"
        text = f"{_timestamp(wall)} {level} {logger}: {message}\n"
        return text + exception if exception else text


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode()


def _message(record: logging.LogRecord) -> str:
    """The record's message (as `getMessage` makes it), each argument but a number cut."""
    message = str(record.msg)
    args = record.args
    if isinstance(args, tuple) and args:
        return message % tuple(a if isinstance(a, int | float) else echoed(str(a)) for a in args)
    return message % args if args else message


def _cut_lines(parts: list[str]) -> str:
    """A traceback, each of its lines cut: its exception's message may be a caller's text."""
    return "".join(echoed(line) + "\n" for line in "".join(parts).splitlines())


class _SinkHandler(logging.Handler):
    """Every log record, as one line of the sink's format."""

    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exception = None
            if record.exc_info:
                exception = _utf8(_cut_lines(traceback.format_exception(*record.exc_info)))
            self._sink.put(
                self._sink.record_line(
                    record.created,
                    record.levelname.lower(),
                    record.name,
                    _utf8(_message(record)),
                    exception,
                )
            )
        except Exception:
            self.handleError(record)


def configure_logging(log_format: LogFormat) -> LogSink:
    """Send every log record through one sink on stderr; the caller closes it at exit."""
    sink = LogSink(log_format)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _SinkHandler(sink)
    handler.addFilter(CallerWarnings())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # a Python warning is a log line like any other
    return sink
