"""The log sink never blocks its caller: a stuck stderr costs lines (counted), not time."""

from __future__ import annotations

import io
import threading

import orjson

from server.telemetry import logs
from server.telemetry.logs import LogSink


class StuckStream(io.StringIO):
    """A stderr whose writes wait until the test lets them through."""

    def __init__(self) -> None:
        super().__init__()
        self.free = threading.Event()
        self.entered = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        self.free.wait(10)
        return super().write(text)


def access(request_id: str) -> logs.AccessLine:
    return (0.0, "info", request_id, "openai", "/v1/x", "echo", "demo", "u", 200, 1.0, None, 1, 2)


def test_a_stuck_stream_drops_lines_past_the_bound_and_says_so() -> None:
    stream = StuckStream()
    sink = LogSink("json", stream)
    sink.put(access("first"))
    assert stream.entered.wait(5)  # the writer thread is stuck in write()
    for i in range(logs.MAX_QUEUED + 50):  # returns at once, however stuck stderr is
        sink.put(access(f"r{i}"))
    stream.free.set()
    sink.close()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    requests = [line for line in lines if line.get("event") == "request"]
    assert requests[0]["request_id"] == "first"
    assert len(requests) == 1 + logs.MAX_QUEUED
    (warning,) = [line for line in lines if line.get("logger") == "tandem.logs"]
    assert warning["level"] == "warning"
    assert warning["message"].startswith("50 log lines dropped")


def test_a_route_is_cut_and_text_values_are_quoted() -> None:
    stream = io.StringIO()
    sink = LogSink("text", stream)
    line = list(access("id-1"))
    line[4] = "/v1/" + "x" * 1000
    line[7] = 'a user "quoted"'
    sink.put(tuple(line))  # type: ignore[arg-type]
    sink.close()
    (text,) = stream.getvalue().splitlines()
    route = next(part for part in text.split() if part.startswith("route="))
    assert len(route) == len("route=") + logs.MAX_ROUTE_CHARS
    assert 'user="a user \\"quoted\\""' in text
