"""The log sink never blocks its caller: a stuck stderr costs lines (counted), not time."""

from __future__ import annotations

import io
import json
import threading
from decimal import Decimal

import orjson
import pytest

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
    return logs.AccessLine(
        ts=0.0,
        level="info",
        request_id=request_id,
        protocol="openai",
        route="/v1/x",
        model="echo",
        provider="demo",
        user="u",
        status=200,
        latency_ms=1.0,
        ttft_ms=None,
        prompt_tokens=1,
        completion_tokens=2,
    )


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
    sink.put(access("id-1")._replace(route="/v1/" + "x" * 1000, user='a user "quoted"'))
    sink.close()
    (text,) = stream.getvalue().splitlines()
    route = next(part for part in text.split() if part.startswith("route="))
    assert len(route) == len("route=") + logs.MAX_ROUTE_CHARS
    assert 'user="a user \\"quoted\\""' in text


def test_a_line_that_is_not_valid_utf8_is_mended_and_the_writer_lives_on() -> None:
    stream = io.StringIO()
    sink = LogSink("json", stream)
    sink.put(access("bad")._replace(user="a\ud800b"))  # a lone surrogate, as a JWT `sub` may carry
    sink.put(access("after"))
    sink.close()
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["request_id"], line["user"]) for line in lines] == [
        ("bad", "a?b"),
        ("after", "u"),
    ]


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_writes_are_whole_lines_of_at_most_a_pipe_buffer() -> None:
    stream = CountingStream()
    sink = LogSink("json", stream)
    for i in range(300):
        sink.put(access(f"r{i}"))
    sink.close()
    assert len(stream.getvalue().splitlines()) == 300
    assert len(stream.writes) > 1
    assert all(len(write) <= logs.MAX_WRITE and write.endswith("\n") for write in stream.writes)


@pytest.mark.parametrize(("nanos", "usd"), [(0, "0"), (8_050_001, "0.008050001")])
def test_the_cost_is_an_exact_number_of_dollars_in_both_formats(nanos: int, usd: str) -> None:
    for log_format in ("json", "text"):
        stream = io.StringIO()
        sink = LogSink(log_format, stream)
        sink.put(access("priced")._replace(cost_nanos=nanos))
        sink.close()
        (line,) = stream.getvalue().splitlines()
        if log_format == "json":
            assert line.endswith(f',"cost_usd":{usd}}}')
            assert "cost_nanos" not in line
            assert json.loads(line, parse_float=Decimal)["cost_usd"] == Decimal(usd)
        else:
            assert line.endswith(f" completion_tokens=2 cost_usd={usd}")
