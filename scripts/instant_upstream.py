"""An instant OpenAI-compatible upstream for scripts/bench.py: canned replies, no framework.

A raw asyncio protocol on uvloop: it reads a request (headers, then
content-length bytes) and writes a canned completion, or 20 canned SSE
events plus the usage event and [DONE] when the body asks to stream. Keeps
connections alive. Prints `http listening on HOST:PORT`.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
import uvloop

WORDS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
HEAD = {"id": "up", "created": 1, "model": "up-model"}
USAGE = {"prompt_tokens": WORDS, "completion_tokens": WORDS, "total_tokens": 2 * WORDS}
TEXT = "".join(f"word{i} " for i in range(WORDS))


def _response(body: bytes, content_type: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


COMPLETION = _response(
    orjson.dumps(
        {
            **HEAD,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": TEXT},
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
    ),
    b"application/json",
)


def _event(choices: list[object], **extra: object) -> bytes:
    data = {**HEAD, "object": "chat.completion.chunk", "choices": choices, **extra}
    return b"data: " + orjson.dumps(data) + b"\n\n"


STREAM = _response(
    b"".join(
        _event([{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}])
        for i in range(WORDS)
    )
    + _event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
    + _event([], usage=USAGE)
    + b"data: [DONE]\n\n",
    b"text/event-stream",
)


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower() + b"\r\n"
            start = head.find(b"content-length:")
            length = int(head[start + 15 : head.find(b"\r\n", start)]) if start >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            streaming = b'"stream":true' in body.replace(b" ", b"")
            self.transport.write(STREAM if streaming else COMPLETION)


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"http listening on 127.0.0.1:{port}\ngrpc listening on -\n")
    sys.stdout.flush()
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())
