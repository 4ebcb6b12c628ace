"""An Ollama server's answers as protos: its NDJSON lines (or its one answer, the same
shape), its embeddings, and what its `/api/show` says a model can do.

Tool call arguments come as JSON objects (sent on as JSON text), and a tool
call's id as Ollama 0.12.10 on sends it (else the gateway makes one); reasoning
is Ollama's `thinking`.
"""

from __future__ import annotations

import orjson
from tandem.v1 import chat_pb2, embeddings_pb2

from server.chunks import Item
from server.context import new_id
from server.errors import UpstreamError
from server.translate.protocols import JSON, EmbeddingsDecoder, StreamDecoderFactory

__all__ = ["StreamDecoder", "capabilities_from_show", "decode_embeddings"]

_TEXT_ONLY = frozenset(("role", "content"))


class StreamDecoder:
    """Ollama's answer lines (or its one answer) as chunks; a tool call Ollama sent
    without an id gets one here."""

    __slots__ = ("_started", "_tools")

    def __init__(self) -> None:
        self._started = False
        self._tools = 0

    def feed(self, line: JSON) -> Item:
        """A line as a chunk, or as its bare text (server/chunks.py) when, after the
        first, it carries nothing but content. Ollama reports a failure mid-stream as
        `{"error": ...}`."""
        if "error" in line:
            raise UpstreamError("upstream provider failed mid-stream")
        message = line.get("message")
        if self._started and not line.get("done") and type(message) is dict:
            content = message.get("content")
            if content and type(content) is str and message.keys() <= _TEXT_ONLY:
                return content
        chunk = chat_pb2.ChatCompletionChunk()
        choice = chunk.choices.add(index=0)
        delta = choice.delta
        if not self._started:
            delta.role = "assistant"
            self._started = True
        message = line.get("message") or {}
        if message.get("content"):
            delta.content = message["content"]
        if message.get("thinking"):
            delta.reasoning_content = message["thinking"]
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            # the upstream's id (Ollama 0.12.10 on), else the gateway's own: distinct
            # across calls and turns, in OpenAI's shape
            given = call.get("id")
            call_id = given if given and type(given) is str else f"call_{new_id()[:24]}"
            piece = delta.tool_calls.add(index=self._tools, id=call_id, type="function")
            piece.function.name = function.get("name", "")
            piece.function.arguments = orjson.dumps(function.get("arguments") or {}).decode()
            self._tools += 1
        if line.get("done"):
            if self._tools:
                choice.finish_reason = "tool_calls"
            else:
                choice.finish_reason = "length" if line.get("done_reason") == "length" else "stop"
            prompt, completion = line.get("prompt_eval_count"), line.get("eval_count")
            if isinstance(prompt, int) and isinstance(completion, int):  # else estimated
                chunk.usage.prompt_tokens = prompt
                chunk.usage.completion_tokens = completion
                chunk.usage.total_tokens = prompt + completion
        elif not (
            delta.HasField("content")
            or delta.tool_calls
            or delta.HasField("role")
            or delta.HasField("reasoning_content")
        ):
            delta.content = ""
        return chunk


def decode_embeddings(data: JSON) -> embeddings_pb2.EmbeddingResponse:
    response = embeddings_pb2.EmbeddingResponse()
    for index, vector in enumerate(data["embeddings"]):
        response.data.add(index=index, embedding=vector)
    tokens = data.get("prompt_eval_count")
    if isinstance(tokens, int):  # else the core estimates it
        response.usage.prompt_tokens = response.usage.total_tokens = tokens
    return response


# bounds on what an upstream's `/api/show` may say a model can do, as it is passed on
_MAX_CAPABILITIES = 32
_MAX_CAPABILITY_CHARS = 64


def capabilities_from_show(data: JSON) -> tuple[str, ...] | None:
    """The `capabilities` of an Ollama server's `/api/show` answer, None if it names
    none (Ollama before 0.6.4) or names them beyond the bounds."""
    found = data.get("capabilities")
    if (
        isinstance(found, list)
        and 0 < len(found) <= _MAX_CAPABILITIES
        and all(isinstance(c, str) and 0 < len(c) <= _MAX_CAPABILITY_CHARS for c in found)
    ):
        return tuple(found)
    return None


_stream: StreamDecoderFactory = StreamDecoder
_embeddings: EmbeddingsDecoder = decode_embeddings
