"""A loopback OpenAI-compatible upstream that drips its streams, for scripts/load.py.

`POST /v1/chat/completions` with `"stream": true` answers `N` chunks at
`--rate` a second (N from `drip N` in the last message, else `--chunks`),
then a finish chunk, a usage chunk (`completion_tokens` = N) and `[DONE]`.
Each chunk's content is `t=<time.time_ns() when written> `, so a client on
the same host measures every chunk's delay from the upstream's write to its
own read. Without `stream` it answers the whole text at once.

Raw asyncio on uvloop with pre-built framing, so that 1,000 streams at
20 chunks a second cost the load core little. Prints `http listening on
HOST:PORT` (and a `grpc` line, as the harnesses read two) and runs until
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
import time

import orjson
import uvloop

HEAD = b'data: {"id":"drip","object":"chat.completion.chunk","created":1,"model":"drip","choices":'
DELTA = HEAD + b'[{"index":0,"delta":{"content":"t=%d "},"finish_reason":null}]}\n\n'
STREAM_HEADERS = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
)
DRIP = re.compile(r"drip (\d+)")


class Streams:
    """Streams open now, and the most open at once (said at exit: the pool's width)."""

    open = 0
    peak = 0


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _tail(prompt_tokens: int, chunks: int) -> bytes:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": chunks,
        "total_tokens": prompt_tokens + chunks,
    }
    finish = HEAD + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    usage_event = HEAD + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n"
    return _chunked(finish + usage_event + b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status.encode(),
        content_type,
        len(body),
        body,
    )


class DripProtocol(asyncio.Protocol):
    """One upstream connection: HTTP/1.1 keep-alive, one request at a time."""

    def __init__(self, default_chunks: int, interval_s: float) -> None:
        self._default_chunks = default_chunks
        self._interval_s = interval_s
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            Streams.open -= 1
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._timer is None:
            self._next_request()

    def _next_request(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._transport is None:
            return
        head = bytes(self._buffer[:end]).decode("latin-1").lower()
        match = re.search(r"\r\ncontent-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        if len(self._buffer) < end + 4 + length:
            return
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        if not head.startswith("post /v1/chat/completions "):
            self._transport.write(_response("404 Not Found", b'{"error":{"message":"no"}}'))
            self._next_request()
            return
        request = orjson.loads(body)
        text = str(request["messages"][-1].get("content") or "")
        found = DRIP.search(text)
        chunks = int(found.group(1)) if found else self._default_chunks
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in request["messages"])
        if request.get("stream"):
            self._transport.write(STREAM_HEADERS)
            Streams.open += 1
            Streams.peak = max(Streams.peak, Streams.open)
            self._drip(self._loop.time(), 0, chunks, prompt_tokens)
        else:
            answer = {
                "id": "drip",
                "object": "chat.completion",
                "created": 1,
                "model": "drip",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "t=0 " * chunks},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": chunks,
                    "total_tokens": prompt_tokens + chunks,
                },
            }
            self._transport.write(_response("200 OK", orjson.dumps(answer)))
            self._next_request()

    def _drip(self, started: float, sent: int, chunks: int, prompt_tokens: int) -> None:
        """Write chunk `sent`, then schedule the next on the absolute schedule (no drift)."""
        transport = self._transport
        if transport is None:
            return
        if sent == chunks:
            self._timer = None
            Streams.open -= 1
            transport.write(_tail(prompt_tokens, chunks))
            self._next_request()
            return
        transport.write(_chunked(DELTA % time.time_ns()))
        self._timer = self._loop.call_at(
            started + (sent + 1) * self._interval_s,
            self._drip,
            started,
            sent + 1,
            chunks,
            prompt_tokens,
        )


async def serve(host: str, chunks: int, rate: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: DripProtocol(chunks, 1 / rate), host, 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"http listening on {host}:{port}\ngrpc listening on -", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()
    print(f"most streams open at once: {Streams.peak}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--chunks", type=int, default=100, help="per stream, unless the prompt says"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="chunks a second")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.chunks, args.rate))


if __name__ == "__main__":
    main()
