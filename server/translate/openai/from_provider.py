"""An OpenAI-compatible provider's answers (its stream's events, its whole answer, its
embeddings) as protos.

Beyond OpenAI's own shapes, answers may say what OpenAI does not: reasoning
(DeepSeek's `reasoning_content`, vLLM's `reasoning`), the stop sequence that
ended a choice (vLLM's `stop_reason`, a string), and cache writes
(OpenRouter's `prompt_tokens_details.cache_write_tokens`).
"""

from __future__ import annotations

from typing import Any

from tandem.v1 import chat_pb2, embeddings_pb2

from server.chunks import Item
from server.errors import UpstreamError
from server.translate.protocols import (
    JSON,
    CompletionDecoder,
    EmbeddingsDecoder,
    StreamDecoderFactory,
)
from server.translate.protojson import parse_into

__all__ = [
    "StreamDecoder",
    "decode_completion",
    "decode_embeddings",
    "decode_event",
    "event_chunk",
]


def _fill_tool_calls(target: Any, calls: Any, *, indexed: bool) -> None:
    for position, call in enumerate(calls or ()):
        item = target.add(index=call.get("index", position) if indexed else position)
        if call.get("id"):
            item.id = call["id"]
        if call.get("type"):
            item.type = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            item.function.name = function["name"]
        if function.get("arguments"):
            item.function.arguments = function["arguments"]


def _fill_usage(chunk: chat_pb2.ChatCompletionChunk, usage: Any) -> None:
    """The upstream's counts, only when it sent both (else the core estimates them)."""
    if not isinstance(usage, dict):
        return
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int) and isinstance(completion, int):
        target = chunk.usage
        target.prompt_tokens = prompt
        target.completion_tokens = completion
        target.total_tokens = prompt + completion
        cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
        if cached:
            target.prompt_tokens_details.cached_tokens = cached
        written = _detail(usage, "prompt_tokens_details", "cache_write_tokens")
        if written:
            target.prompt_tokens_details.cache_write_tokens = written
        reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens")
        if reasoning:
            target.completion_tokens_details.reasoning_tokens = reasoning


def _detail(usage: JSON, details: str, name: str) -> int:
    """One count of OpenAI's `*_tokens_details`, 0 when absent or not a count."""
    found = usage.get(details)
    value = found.get(name) if isinstance(found, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _stop_sequence(choice: chat_pb2.ChunkChoice, item: JSON) -> None:
    """vLLM's `stop_reason`: the stop string that ended a choice (a token id, or null at
    the end of sequence, names none)."""
    matched = item.get("stop_reason")
    if type(matched) is str and choice.finish_reason == "stop":
        choice.stop_sequence = matched


def _reasoning(source: JSON) -> Any:
    """DeepSeek's (and older vLLM's) `reasoning_content`, else newer vLLM's `reasoning`."""
    reasoning = source.get("reasoning_content")
    return source.get("reasoning") if reasoning is None else reasoning


def _raise_upstream_error(data: JSON) -> None:
    """An OpenAI-compatible server may report a failure inside a 200: as an event or a body."""
    if data.get("error") is not None:
        error = data["error"]
        kind = error.get("type") if isinstance(error, dict) else None
        retryable = kind in ("server_error", "overloaded_error", "rate_limit_error", None)
        raise UpstreamError(f"upstream provider failed: {kind or 'error'}", retryable=retryable)


def _plain_text(data: JSON) -> str | None:
    """The content of an event that carries nothing else (most of a stream), or None.
    Its `system_fingerprint`, if any, is taken to be the stream's (the first event's)."""
    choices = data.get("choices")
    if type(choices) is not list or len(choices) != 1 or data.get("usage") or "error" in data:
        return None
    fingerprint = data.get("system_fingerprint")
    if fingerprint is not None and type(fingerprint) is not str:
        return None  # the whole path refuses it
    item = choices[0]
    if type(item) is not dict or item.get("index") or item.get("logprobs"):
        return None
    delta = item.get("delta")
    if type(delta) is not dict or len(delta) != 1 or item.get("finish_reason") is not None:
        return None
    content = delta.get("content")
    return content if type(content) is str else None


class StreamDecoder:
    """One stream's events as chunks, or as their bare text (server/chunks.py) after the
    first: the stream's head (id, time, model, `system_fingerprint`) is made from the
    first, which is therefore always a whole chunk."""

    __slots__ = ("_opened",)

    def __init__(self) -> None:
        self._opened = False

    def feed(self, data: JSON) -> Item:
        if self._opened:
            return decode_event(data)
        self._opened = True
        return event_chunk(data)


def decode_event(data: JSON) -> Item:
    """One stream event, after the first: its bare text if it carries nothing else, else
    the chunk (a usage-only event has no choices)."""
    text = _plain_text(data)
    return text if text is not None else _chunk(data, "delta", whole=False)


def event_chunk(data: JSON) -> chat_pb2.ChatCompletionChunk:
    """One stream event as a chunk."""
    return _chunk(data, "delta", whole=False)


def decode_completion(data: JSON) -> chat_pb2.ChatCompletionChunk:
    """A whole completion as the one chunk of an unchunked answer."""
    return _chunk(data, "message", whole=True)


def _chunk(data: JSON, key: str, *, whole: bool) -> chat_pb2.ChatCompletionChunk:
    """An event's choices (their `delta`) or a whole answer's (their `message`: the role
    and finish reason said, or the defaults) as a chunk."""
    _raise_upstream_error(data)
    chunk = chat_pb2.ChatCompletionChunk()
    for item in data.get("choices") or ():
        choice = chunk.choices.add(index=item.get("index") or 0)
        source = item.get(key) or {}
        target = choice.delta
        if whole:
            target.role = source.get("role") or "assistant"
        elif source.get("role") is not None:
            target.role = source["role"]
        if source.get("content") is not None:
            target.content = source["content"]
        if source.get("refusal") is not None:
            target.refusal = source["refusal"]
        if isinstance(reasoning := _reasoning(source), str):
            target.reasoning_content = reasoning
        if source.get("tool_calls"):
            _fill_tool_calls(target.tool_calls, source["tool_calls"], indexed=not whole)
        if whole or item.get("finish_reason") is not None:
            choice.finish_reason = (
                (item.get("finish_reason") or "stop") if whole else item["finish_reason"]
            )
            _stop_sequence(choice, item)
        if item.get("logprobs"):
            parse_into(item["logprobs"], choice.logprobs, strict=False)
    if data.get("usage"):  # a stream's on its last event only
        _fill_usage(chunk, data["usage"])
    if data.get("system_fingerprint"):
        chunk.system_fingerprint = data["system_fingerprint"]
    return chunk


def decode_embeddings(data: JSON) -> embeddings_pb2.EmbeddingResponse:
    response = embeddings_pb2.EmbeddingResponse()
    for position, item in enumerate(data["data"]):
        response.data.add(index=item.get("index", position), embedding=item["embedding"])
    usage = data.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(prompt, int):  # else the core estimates it
        response.usage.prompt_tokens = response.usage.total_tokens = prompt
    return response


_stream: StreamDecoderFactory = StreamDecoder
_completion: CompletionDecoder = decode_completion
_embeddings: EmbeddingsDecoder = decode_embeddings
