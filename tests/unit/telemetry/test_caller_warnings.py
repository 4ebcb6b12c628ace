"""Caller-caused warnings: once a minute per kind, with a count; a caller's text cut."""

from __future__ import annotations

import io
import logging

import orjson

from server.telemetry.caller_warnings import CallerWarnings
from server.telemetry.logs import LogSink, _SinkHandler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


MEMBER = "Member doesn't match the w3c identifiers format %s"


def test_one_warning_of_a_kind_a_minute_then_the_count_of_those_left_out() -> None:
    clock = Clock()
    limit = CallerWarnings(clock=clock)
    span_logger = "opentelemetry.trace.span"
    assert limit.filter(record(span_logger, MEMBER, "a"))
    assert not any(limit.filter(record(span_logger, MEMBER, f"x{i}")) for i in range(37))
    other = record("uvicorn.error", "Invalid HTTP request received.")
    assert limit.filter(other)  # another kind has its own minute
    clock.now += 59.9
    assert not limit.filter(record(span_logger, MEMBER, "b"))
    clock.now += 0.2
    later = record(span_logger, MEMBER, "c")
    assert limit.filter(later)
    assert later.getMessage() == (
        "Member doesn't match the w3c identifiers format c"
        " (38 more like this left out since the last)"
    )
    clock.now += 60
    quiet = record(span_logger, MEMBER, "d")
    assert limit.filter(quiet)
    assert quiet.getMessage().endswith("format d")  # none left out: no count


def test_only_warnings_of_the_caller_caused_loggers_are_limited() -> None:
    limit = CallerWarnings(clock=Clock())
    for _ in range(3):
        assert limit.filter(record("tandem.usage", "usage store unavailable (%s)", "x"))
        assert limit.filter(record("uvicorn.error", "exploded", level=logging.ERROR))
        assert limit.filter(record("opentelemetry.trace.span", "note", level=logging.INFO))


def lines_of(*records: logging.LogRecord) -> list[dict[str, str]]:
    stream = io.StringIO()
    sink = LogSink("json", stream)
    handler = _SinkHandler(sink)
    for one in records:
        handler.handle(one)
    sink.close()
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_every_argument_of_a_message_is_cut_but_numbers() -> None:
    (line,) = lines_of(record("x", "member %s (%d of %r)", "m" * 4000, 12345678, "r" * 300))
    assert line["message"] == f"member {'m' * 256}… (12345678 of '{'r' * 256}…')"


def test_a_traceback_is_cut_line_by_line() -> None:
    try:
        raise ValueError("v" * 5000)
    except ValueError as exc:
        failed = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed", (), (ValueError, exc, None)
        )
    (line,) = lines_of(failed)
    assert "v" * 240 in line["exception"]
    assert max(len(text) for text in line["exception"].splitlines()) <= 257
