"""`responses: native`: the upstream's usage, once its closing event is read, is what a
relayed stream is charged and recorded, even if the caller is gone (or stops reading)
before that event reaches it."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import orjson
import pytest

from tests.fake_responses import UPSTREAM_KEY, UPSTREAM_MODEL, USAGE, FakeResponsesUpstream
from tests.responses_helpers import ADMIN_KEY, AUTH, token
from tests.servers import TandemProcess, start_tandem, usage_records

CONFIG = f"""
providers:
  - {{name: up, kind: openai, base_url: "%(url)s", api_key: "{UPSTREAM_KEY}", responses: native}}
models:
  - {{name: gpt-native, provider: up, upstream: "{UPSTREAM_MODEL}"}}
tiers:
  free: {{default_model: gpt-native}}
{AUTH}
usage: {{store: "sqlite:///usage.db", flush_interval_ms: 20}}
server: {{max_body_bytes: 1048576, write_timeout_s: 1}}  # a stream: 8 MiB
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeResponsesUpstream]:
    with FakeResponsesUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeResponsesUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TandemProcess]:
    process = start_tandem(tmp_path_factory.mktemp("usage"), CONFIG % {"url": upstream.base_url})
    yield process
    assert process.terminate() == 0, process.stderr()


def test_a_reader_that_stalls_before_the_last_event_is_charged_the_upstreams_usage(
    gateway: TandemProcess, upstream: FakeResponsesUpstream
) -> None:
    # 6 MiB of one delta fill every buffer between the gateway and a reader that reads
    # nothing; `response.completed` then waits to be written until write_timeout_s cuts
    upstream.reset("big:6")
    body = orjson.dumps({"model": "gpt-native", "input": "x", "stream": True})
    head = (
        f"POST /v1/responses HTTP/1.1\r\nhost: tandem\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {token('stalled')}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    host, port = gateway.base_url.removeprefix("http://").rsplit(":", 1)
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with reader:
        reader.connect((host, int(port)))
        reader.sendall(head.encode() + body)
        [record] = usage_records(gateway, 1, ADMIN_KEY, user="stalled")
    assert (record["status"], record["usage_source"]) == ("cancelled", "upstream")
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        USAGE["input_tokens"],
        USAGE["output_tokens"],
    )
    assert (record["cached_tokens"], record["reasoning_tokens"]) == (13, 17)
