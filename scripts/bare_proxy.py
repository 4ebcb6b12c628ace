"""The baseline of scripts/bench.py: a bare Python proxy, HTTP and gRPC, on one loop.

- HTTP: bare Starlette + one pooled aiohttp session. `POST /v1/chat/completions`
  parses the JSON body, re-encodes it for the upstream (argv[1], or argv[2]
  when it streams), and parses and re-encodes the answer with the model
  renamed: every event of a stream on its own, each written as it is read.
- gRPC: a bare grpc.aio `ChatService` in front of the same session, building
  its messages directly from the upstream's JSON.

No validation, policy, accounting or telemetry: the floor a Python proxy on
this stack reaches. uvicorn runs with Tandem's settings. Prints the same
listening lines as `tandem serve`.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import orjson
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from tandem.v1 import chat_pb2, chat_pb2_grpc

from server.config import ServerConfig
from server.lifecycle import start_http_server

UPSTREAM = sys.argv[1] + "/chat/completions"
STREAM_UPSTREAM = (sys.argv[2] if len(sys.argv) > 2 else sys.argv[1]) + "/chat/completions"
HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}
session: aiohttp.ClientSession


async def _events(upstream: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    try:
        async for line in upstream.content:
            if line.startswith(b"data: {"):
                yield orjson.loads(line[6:])
    finally:
        upstream.release()


async def chat(request: Request) -> Response:
    body = orjson.loads(await request.body())
    model = body["model"]
    streams = bool(body.get("stream"))
    upstream = await session.post(
        STREAM_UPSTREAM if streams else UPSTREAM, data=orjson.dumps(body), headers=HEADERS
    )
    if streams:

        async def events() -> AsyncIterator[bytes]:
            async for event in _events(upstream):
                event["model"] = model
                yield b"data: " + orjson.dumps(event) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    answer = orjson.loads(await upstream.read())
    upstream.release()
    answer["model"] = model
    return Response(orjson.dumps(answer), media_type="application/json")


def _upstream_body(request: chat_pb2.ChatCompletionRequest, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def _usage(target: chat_pb2.Usage, usage: dict[str, int]) -> None:
    target.prompt_tokens = usage["prompt_tokens"]
    target.completion_tokens = usage["completion_tokens"]
    target.total_tokens = usage["total_tokens"]


class BareChat(chat_pb2_grpc.ChatServiceServicer):
    async def CreateChatCompletion(
        self,
        request: chat_pb2.ChatCompletionRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> chat_pb2.ChatCompletion:
        async with session.post(
            UPSTREAM, data=_upstream_body(request, False), headers=HEADERS
        ) as upstream:
            answer = orjson.loads(await upstream.read())
        completion = chat_pb2.ChatCompletion(
            id=answer["id"], created=answer["created"], model=request.model
        )
        for item in answer["choices"]:
            choice = completion.choices.add(index=item["index"])
            choice.message.role = item["message"]["role"]
            choice.message.content = item["message"]["content"]
            choice.finish_reason = item["finish_reason"]
        _usage(completion.usage, answer["usage"])
        return completion

    async def StreamChatCompletion(
        self,
        request: chat_pb2.ChatCompletionRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[chat_pb2.ChatCompletionChunk]:
        upstream = await session.post(
            STREAM_UPSTREAM, data=_upstream_body(request, True), headers=HEADERS
        )
        async for event in _events(upstream):
            chunk = chat_pb2.ChatCompletionChunk(
                id=event["id"], created=event["created"], model=request.model
            )
            for item in event["choices"]:
                choice = chunk.choices.add(index=item["index"])
                if (content := item["delta"].get("content")) is not None:
                    choice.delta.content = content
                if item.get("finish_reason"):
                    choice.finish_reason = item["finish_reason"]
            if event.get("usage"):
                _usage(chunk.usage, event["usage"])
            yield chunk


async def main() -> None:
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
    server = grpc.aio.server()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(BareChat(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    _, http = await start_http_server(app, sock, ServerConfig(shutdown_grace_s=1))
    http_port = sock.getsockname()[1]
    sys.stdout.write(
        f"http listening on 127.0.0.1:{http_port}\ngrpc listening on 127.0.0.1:{grpc_port}\n"
    )
    sys.stdout.flush()
    await http


if __name__ == "__main__":
    uvloop.run(main())
