"""Anthropic's Messages API answers (a whole message, or its stream's events) as protos.

Thinking blocks come back as `reasoning_content` and `reasoning_signature`.
Usage: `input_tokens` and the cache's reads and writes together are the
proto's prompt tokens (all input), the reads its `cached_tokens`, the writes
its `cache_write_tokens`. A `stop_sequence` stop names the sequence that
matched on the choice.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
from tandem.v1 import chat_pb2

from server.chunks import Item
from server.errors import UpstreamError
from server.translate.protocols import JSON, CompletionDecoder, StreamDecoderFactory

__all__ = ["StreamDecoder", "decode_completion"]

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class _PromptCounts(NamedTuple):
    """Anthropic's input counts as the proto has them: `prompt` is all input, cache
    reads and writes included (None: not said); `cached` the reads, `written` the writes."""

    prompt: int | None
    cached: int
    written: int


def _count(usage: JSON, name: str) -> int:
    value = usage.get(name)
    return value if type(value) is int and value > 0 else 0


def _prompt_counts(usage: JSON) -> _PromptCounts:
    input_tokens = usage.get("input_tokens")
    cached = _count(usage, "cache_read_input_tokens")
    written = _count(usage, "cache_creation_input_tokens")
    if type(input_tokens) is not int:
        return _PromptCounts(None, cached, written)
    return _PromptCounts(input_tokens + cached + written, cached, written)


def _usage(chunk: chat_pb2.ChatCompletionChunk, usage: JSON, prompt: _PromptCounts) -> None:
    """The upstream's counts, only when it sent both (else the core estimates them);
    its cache reads and writes are the proto's cached and cache write tokens."""
    completion = usage.get("output_tokens")
    if prompt.prompt is not None and isinstance(completion, int):
        target = chunk.usage
        target.prompt_tokens = prompt.prompt
        target.completion_tokens = completion
        target.total_tokens = prompt.prompt + completion
        if prompt.cached:
            target.prompt_tokens_details.cached_tokens = prompt.cached
        if prompt.written:
            target.prompt_tokens_details.cache_write_tokens = prompt.written


def _finish(choice: chat_pb2.ChunkChoice, stop_reason: Any, stop_sequence: Any) -> None:
    """The proto's finish_reason, and which stop sequence matched when one did."""
    choice.finish_reason = STOP_REASONS.get(stop_reason or "", "stop")
    if stop_reason == "stop_sequence" and type(stop_sequence) is str:
        choice.stop_sequence = stop_sequence


def decode_completion(message: JSON) -> chat_pb2.ChatCompletionChunk:
    """A whole Messages API answer as the one chunk of an unchunked answer."""
    chunk = chat_pb2.ChatCompletionChunk()
    choice = chunk.choices.add(index=0)
    delta = choice.delta
    delta.role = "assistant"
    texts, thoughts = [], []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "thinking":
            thoughts.append(block.get("thinking") or "")
            if block.get("signature"):  # one per block; the last one is kept, as in a stream
                delta.reasoning_signature = block["signature"]
        elif block.get("type") == "tool_use":
            call = delta.tool_calls.add(
                index=len(delta.tool_calls), id=block["id"], type="function"
            )
            call.function.name = block["name"]
            call.function.arguments = orjson.dumps(block.get("input") or {}).decode()
    if texts or not delta.tool_calls:
        delta.content = "".join(texts)
    if thoughts:
        delta.reasoning_content = "".join(thoughts)
    _finish(choice, message.get("stop_reason"), message.get("stop_sequence"))
    usage = message.get("usage") or {}
    _usage(chunk, usage, _prompt_counts(usage))
    return chunk


class StreamDecoder:
    """Turns the Messages API's stream events into chunks, one event at a time.

    message_start -> the role; content_block_start (tool_use) -> a tool call's
    id and name; content_block_delta -> text, thinking, signature or argument
    pieces; message_delta -> finish_reason (and the stop sequence that matched) and
    usage; ping, *_stop -> nothing.
    """

    __slots__ = ("_prompt", "_tool_index")

    def __init__(self) -> None:
        self._prompt = _PromptCounts(None, 0, 0)
        self._tool_index: dict[int, int] = {}  # content block index -> tool call index

    def feed(self, event: JSON) -> Item | None:
        """An event as a chunk, as its bare text (server/chunks.py: a text delta; the
        stream opens with `message_start`, a chunk), or None (nothing to say)."""
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event["delta"]
            if delta.get("type") == "text_delta":
                text = delta.get("text") or ""
                if type(text) is str:
                    return text
            return self._piece(event, delta)
        if kind == "message_start":
            return self._start(event)
        if kind == "content_block_start":
            return self._tool_call(event)
        if kind == "message_delta":
            return self._end(event)
        if kind == "error":
            error = event.get("error") or {}
            retryable = error.get("type") in ("overloaded_error", "api_error")
            raise UpstreamError(
                f"upstream provider failed: {error.get('type', 'error')}", retryable=retryable
            )
        return None

    def _piece(self, event: JSON, delta: JSON) -> chat_pb2.ChatCompletionChunk | None:
        """A block's delta: text, thinking, a signature or a tool call's arguments."""
        chunk = chat_pb2.ChatCompletionChunk()
        choice = chunk.choices.add(index=0)
        piece_kind = delta.get("type")
        if piece_kind == "text_delta":
            choice.delta.content = delta.get("text") or ""
        elif piece_kind == "thinking_delta":
            choice.delta.reasoning_content = delta.get("thinking") or ""
        elif piece_kind == "signature_delta":
            choice.delta.reasoning_signature = delta.get("signature") or ""
        elif piece_kind == "input_json_delta":
            index = self._tool_index.get(event.get("index", 0), 0)
            piece = choice.delta.tool_calls.add(index=index)
            piece.function.arguments = delta.get("partial_json") or ""
        else:
            return None  # citations: nothing to say in OpenAI's shape
        return chunk

    def _start(self, event: JSON) -> chat_pb2.ChatCompletionChunk:
        message = event.get("message") or {}
        self._prompt = _prompt_counts(message.get("usage") or {})
        chunk = chat_pb2.ChatCompletionChunk()
        chunk.choices.add(index=0).delta.role = "assistant"
        return chunk

    def _tool_call(self, event: JSON) -> chat_pb2.ChatCompletionChunk | None:
        block = event.get("content_block") or {}
        if block.get("type") != "tool_use":
            return None
        index = self._tool_index[event.get("index", 0)] = len(self._tool_index)
        chunk = chat_pb2.ChatCompletionChunk()
        call = chunk.choices.add(index=0).delta.tool_calls.add(
            index=index, id=block.get("id", ""), type="function"
        )
        call.function.name = block.get("name", "")
        return chunk

    def _end(self, event: JSON) -> chat_pb2.ChatCompletionChunk:
        chunk = chat_pb2.ChatCompletionChunk()
        choice = chunk.choices.add(index=0)
        delta = event.get("delta") or {}
        _finish(choice, delta.get("stop_reason"), delta.get("stop_sequence"))
        usage = event.get("usage") or {}
        if "input_tokens" in usage:  # newer streams count again at the end
            self._prompt = _prompt_counts(usage)
        _usage(chunk, usage, self._prompt)
        return chunk


_stream: StreamDecoderFactory = StreamDecoder
_completion: CompletionDecoder = decode_completion
