"""The baseline for scripts/bench.py: canned answers, no gateway.

A bare grpc.aio ChatService and a bare Starlette app, on one uvloop loop with
the same uvicorn settings as Tandem: what Python gRPC and Starlette/uvicorn
themselves cost on this machine. Prints the same listening lines as
`tandem serve`.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator

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

WORDS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
TEXT = "".join(f"word{i} " for i in range(WORDS))
COMPLETION = chat_pb2.ChatCompletion(
    id="chatcmpl-bare",
    model="echo",
    choices=[
        chat_pb2.Choice(
            message=chat_pb2.ChatMessage(role="assistant", content=TEXT), finish_reason="stop"
        )
    ],
)
CHUNKS = [
    chat_pb2.ChatCompletionChunk(
        id="chatcmpl-bare",
        model="echo",
        choices=[chat_pb2.ChunkChoice(delta=chat_pb2.Delta(content=f"word{i} "))],
    )
    for i in range(WORDS)
]
METADATA = (("x-request-id", "bare"),)
JSON_COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bare",
        "object": "chat.completion",
        "created": 0,
        "model": "echo",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": WORDS, "completion_tokens": WORDS, "total_tokens": 2 * WORDS},
    }
)
EVENTS = [
    b"data: "
    + orjson.dumps(
        {
            "id": "chatcmpl-bare",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "echo",
            "choices": [{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}],
        }
    )
    + b"\n\n"
    for i in range(WORDS)
] + [b"data: [DONE]\n\n"]


class BareChat(chat_pb2_grpc.ChatServiceServicer):
    async def CreateChatCompletion(
        self,
        request: chat_pb2.ChatCompletionRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> chat_pb2.ChatCompletion:
        await context.send_initial_metadata(METADATA)
        return COMPLETION

    async def StreamChatCompletion(
        self,
        request: chat_pb2.ChatCompletionRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[chat_pb2.ChatCompletionChunk]:
        await context.send_initial_metadata(METADATA)
        for chunk in CHUNKS:
            yield chunk


async def chat(request: Request) -> Response:
    body = orjson.loads(await request.body())
    if body.get("stream"):

        async def events() -> AsyncIterator[bytes]:
            for event in EVENTS:
                yield event

        return StreamingResponse(events(), media_type="text/event-stream")
    return Response(JSON_COMPLETION, media_type="application/json")


async def main() -> None:
    server = grpc.aio.server()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(BareChat(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    _, http = await start_http_server(
        app, sock, ServerConfig(shutdown_grace_s=1)
    )  # the uvicorn settings Tandem uses
    http_port = sock.getsockname()[1]
    sys.stdout.write(
        f"http listening on 127.0.0.1:{http_port}\ngrpc listening on 127.0.0.1:{grpc_port}\n"
    )
    sys.stdout.flush()
    await http


if __name__ == "__main__":
    uvloop.run(main())
