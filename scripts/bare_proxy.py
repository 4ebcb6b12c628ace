"""The proxy baseline for scripts/bench.py: bare Starlette + one pooled aiohttp session.

POST /v1/chat/completions is forwarded to the upstream given as argv[1], or
when the request streams to argv[2] (default: argv[1]); the answer is
returned as is (streamed line by line when the request streams).
No validation, translation, policy or accounting: the floor a Python proxy
on this stack can reach. Prints `http listening on HOST:PORT`.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from server.config import ServerConfig
from server.lifecycle import start_http_server

UPSTREAM = sys.argv[1]
STREAM_UPSTREAM = sys.argv[2] if len(sys.argv) > 2 else UPSTREAM
session: aiohttp.ClientSession


async def chat(request: Request) -> Response:
    body = await request.body()
    streams = b'"stream":true' in body.replace(b" ", b"")
    upstream = await session.post(
        (STREAM_UPSTREAM if streams else UPSTREAM) + "/chat/completions",
        data=body,
        headers={"content-type": "application/json"},
    )
    if streams:

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for line in upstream.content:
                    yield line
            finally:
                upstream.release()

        return StreamingResponse(lines(), media_type="text/event-stream")
    data = await upstream.read()
    upstream.release()
    return Response(data, media_type="application/json")


async def main() -> None:
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    _, server = await start_http_server(
        app, sock, ServerConfig(shutdown_grace_s=1)
    )  # the uvicorn settings Tandem uses
    sys.stdout.write(f"http listening on 127.0.0.1:{sock.getsockname()[1]}\ngrpc listening on -\n")
    sys.stdout.flush()
    await server


if __name__ == "__main__":
    uvloop.run(main())
