"""The baseline for scripts/bench.py: a bare grpc.aio ChatService with canned answers.

Same stubs, same loop (uvloop), same initial metadata as Tandem, no gateway:
what Python gRPC itself costs on this machine.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import grpc
import uvloop
from tandem.v1 import chat_pb2, chat_pb2_grpc

WORDS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
ANSWER = "".join(f"word{i} " for i in range(WORDS))
COMPLETION = chat_pb2.ChatCompletion(
    id="chatcmpl-bare",
    model="echo",
    choices=[
        chat_pb2.Choice(
            message=chat_pb2.ChatMessage(role="assistant", content=ANSWER), finish_reason="stop"
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


async def main() -> None:
    server = grpc.aio.server()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(BareChat(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sys.stdout.write(f"http listening on -\ngrpc listening on 127.0.0.1:{port}\n")
    sys.stdout.flush()
    await server.wait_for_termination()


if __name__ == "__main__":
    uvloop.run(main())
