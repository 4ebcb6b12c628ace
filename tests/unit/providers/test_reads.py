"""Streams travel in batches: what one upstream read brought leaves in one write.

The readers are driven by a real aiohttp server on loopback that writes its
events in chosen pieces; the door's writer by counting the ASGI messages it sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from starlette.types import Message
from tandem.v1 import chat_pb2

from http_bridge.framing import SSE
from http_bridge.streaming import ChunkStreamResponse
from server.chunks import whole
from server.context import CallContext
from server.errors import UpstreamError
from server.providers import reads
from server.providers.reads import line_batches, sse_batches

Pieces = list[bytes | float]  # bytes to write at once, or seconds to wait


async def _served(pieces: Pieces, read: Callable[[aiohttp.ClientResponse], Awaitable[Any]]) -> Any:
    """`read` of the answer of a server that writes `pieces` (each in one write)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            if isinstance(piece, float):
                await asyncio.sleep(piece)
            else:
                await response.write(piece)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/") as r,
        ):
            return await read(r)
    finally:
        await runner.cleanup()


async def _all(batches: AsyncIterator[list[bytes]]) -> list[list[bytes]]:
    return [batch async for batch in batches]


def _events(*payloads: str) -> bytes:
    return b"".join(f"data: {p}\n\n".encode() for p in payloads)


async def test_events_written_together_are_one_batch_and_a_late_one_its_own() -> None:
    burst = _events(*(str(i) for i in range(10)))
    batches = await _served(
        [burst, 0.2, _events("10"), 0.2, _events("[DONE]")],
        lambda r: _all(sse_batches(r)),
    )
    assert batches == [[str(i).encode() for i in range(10)], [b"10"]]


async def test_an_event_split_across_writes_is_joined_and_done_ends_the_stream() -> None:
    pieces: Pieces = [b'data: {"a"', 0.05, b": 1}\n", 0.05, b"\n: a comment\r\ndata: 2\r\n\r\n"]
    pieces += [0.05, _events("[DONE]", "after-done")]
    batches = await _served(pieces, lambda r: _all(sse_batches(r)))
    assert batches == [[b'{"a": 1}'], [b"2"]]


async def test_a_last_line_without_newline_still_counts() -> None:
    batches = await _served([b'{"n": 1}\n{"n": 2}', 0.05, b"\n{"], lambda r: _all(line_batches(r)))
    assert [line for batch in batches for line in batch] == [b'{"n": 1}', b'{"n": 2}', b"{"]


async def test_a_line_longer_than_the_bound_is_an_upstream_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reads, "MAX_LINE_BYTES", 1000)
    cases: list[Pieces] = [[b"x" * 600, 0.05, b"x" * 600], [b"ok\n" + b"y" * 1200]]
    for pieces in cases:
        with pytest.raises(UpstreamError, match="too long"):
            await _served(pieces, lambda r: _all(line_batches(r)))


def _chunk(text: str) -> chat_pb2.ChatCompletionChunk:
    chunk = chat_pb2.ChatCompletionChunk()
    chunk.choices.add().delta.content = text
    return chunk


async def test_the_door_writes_each_batch_in_one_send() -> None:
    async def rest() -> AsyncGenerator[list[chat_pb2.ChatCompletionChunk], None]:
        yield [_chunk("b"), _chunk("c"), _chunk("d")]
        yield [_chunk("e")]

    response = ChunkStreamResponse(
        [_chunk("a")],
        rest(),
        encode=lambda chunk: SSE.event(whole(chunk).choices[0].delta.content.encode()),
        framing=SSE,
        ctx=CallContext(request_id="r", protocol="openai"),
    )
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    await response({"type": "http"}, receive, send)
    assert [m.get("body") for m in sent[1:]] == [
        b"data: a\n\n",
        b"data: b\n\ndata: c\n\ndata: d\n\n",
        b"data: e\n\n",
        b"data: [DONE]\n\n",
    ]


async def test_a_whole_line_longer_than_the_bound_inside_one_read_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reads, "MAX_LINE_BYTES", 1000)
    cases: list[Pieces] = [[b"z" * 5000 + b"\nok\n"], [b"x" * 900, 0.05, b"x" * 900 + b"\nok\n"]]
    for pieces in cases:
        with pytest.raises(UpstreamError, match="too long"):
            await _served(pieces, lambda r: _all(line_batches(r)))
    fine = await _served([b"a" * 900 + b"\n" + b"b" * 900 + b"\n"], lambda r: _all(line_batches(r)))
    assert [len(line) for batch in fine for line in batch] == [900, 900]
