"""Protos as Anthropic's Messages API answers: one message, or its named stream events.

A message's content is its blocks in order: `thinking` (with its signature),
`text`, then one `tool_use` per tool call. The stream is Anthropic's order:
`message_start` (usage: the prompt's estimate, as an OpenAI-compatible
upstream says its counts only at the end), then per block
`content_block_start`, its deltas (`thinking_delta` and `signature_delta`,
`text_delta`, `input_json_delta`), `content_block_stop`, then
`message_delta` (`stop_reason`, the final `usage`) and `message_stop`.

Text and thinking go out as they come. A tool call's pieces are held until
the answer finishes, then sent as its block with one `input_json_delta` per
piece (they concatenate to its arguments): the blocks of a message cannot
interleave, and an upstream's tool calls can. A message that called a tool
stops with `tool_use`, whatever the upstream said; one that a stop sequence
ended, where the upstream said which, with `stop_sequence` and that sequence.
Usage is Anthropic's split: `input_tokens` without the cache's reads and
writes, `cache_read_input_tokens` and `cache_creation_input_tokens` beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from tandem.v1 import chat_pb2, models_pb2

from server.chunks import Item
from server.translate.common import ToolCallPieces, named_event
from server.translate.protocols import JSON, ItemEncoder

__all__ = ["StreamEncoder", "encode_completion", "encode_model", "encode_models", "message_id"]

# the proto's finish_reason -> Anthropic's stop_reason
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def message_id(completion_id: str) -> str:
    return "msg_" + completion_id.removeprefix("chatcmpl-")


def _stop(
    finish_reason: str, stop_sequence: str | None, called_tools: bool
) -> tuple[str, str | None]:
    """Anthropic's `stop_reason`, and its `stop_sequence` (only when that one stopped)."""
    if called_tools:
        return "tool_use", None
    if stop_sequence is not None:
        return "stop_sequence", stop_sequence
    return STOP_REASONS.get(finish_reason, "end_turn"), None


def _stop_sequence(choice: chat_pb2.Choice | chat_pb2.ChunkChoice) -> str | None:
    return choice.stop_sequence if choice.HasField("stop_sequence") else None


def _input(arguments: str) -> Any:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}  # not JSON: Anthropic's input is an object, whatever the model wrote
    return value if isinstance(value, dict) else {}


def _usage(usage: chat_pb2.Usage) -> JSON:
    """Anthropic's counts: its `input_tokens` leaves out the cache's reads and writes,
    which the proto's prompt tokens include, and says them beside it."""
    details = usage.prompt_tokens_details
    cached, written = details.cached_tokens, details.cache_write_tokens
    out: JSON = {
        "input_tokens": max(usage.prompt_tokens - cached - written, 0),
        "output_tokens": usage.completion_tokens,
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    if written:
        out["cache_creation_input_tokens"] = written
    return out


def encode_completion(completion: chat_pb2.ChatCompletion) -> JSON:
    choice = completion.choices[0] if completion.choices else chat_pb2.Choice()
    message = choice.message
    stop_reason, stop_sequence = _stop(
        choice.finish_reason, _stop_sequence(choice), bool(message.tool_calls)
    )
    content: list[JSON] = []
    if message.reasoning_content:
        content.append(
            {
                "type": "thinking",
                "thinking": message.reasoning_content,
                "signature": message.reasoning_signature,
            }
        )
    if message.content:
        content.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.function.name,
                "input": _input(call.function.arguments),
            }
        )
    return {
        "id": message_id(completion.id),
        "type": "message",
        "role": "assistant",
        "model": completion.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(completion.usage),
    }


# as Anthropic opens a thinking block: the signature comes last, as its own delta
_THINKING_START: JSON = {"type": "thinking", "thinking": "", "signature": ""}


class StreamEncoder:
    """Chunks in, Anthropic's events out; `encode` is called with the first chunk first.
    `prompt_tokens` is what `message_start` says before the upstream's counts: the
    core's estimate."""

    __slots__ = ("_first", "_index", "_kind", "_prompt", "_stop", "_stop_sequence", "_tools")

    def __init__(self, prompt_tokens: int) -> None:
        self._first = True
        self._prompt = prompt_tokens
        self._index = -1  # the open block's index
        self._kind = ""  # its type: "thinking" or "text" ("" for none open)
        self._tools: dict[int, ToolCallPieces] = {}
        self._stop = ""
        self._stop_sequence: str | None = None

    def _open(self, kind: str, block: JSON) -> bytes:
        out = self._close()
        self._index += 1
        self._kind = kind
        return out + named_event(
            "content_block_start",
            {"type": "content_block_start", "index": self._index, "content_block": block},
        )

    def _close(self) -> bytes:
        if not self._kind:
            return b""
        self._kind = ""
        return named_event(
            "content_block_stop", {"type": "content_block_stop", "index": self._index}
        )

    def _delta(self, delta: JSON) -> bytes:
        return named_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self._index, "delta": delta},
        )

    def _text(self, text: str) -> bytes:
        out = b"" if self._kind == "text" else self._open("text", {"type": "text", "text": ""})
        return out + self._delta({"type": "text_delta", "text": text})

    def _finish(self, finish_reason: str, stop_sequence: str | None) -> bytes:
        """Close what is open and send the tool calls held back, once."""
        if self._stop:
            return b""
        out = self._close()
        for index, call in self._tools.items():
            call_id = call.id or f"toolu_{index}"
            block = {"type": "tool_use", "id": call_id, "name": call.name, "input": {}}
            out += self._open("tool_use", block)
            for piece in call.pieces:
                out += self._delta({"type": "input_json_delta", "partial_json": piece})
            out += self._close()
        self._stop, self._stop_sequence = _stop(finish_reason, stop_sequence, bool(self._tools))
        return out

    def encode(self, chunk: Item) -> bytes:
        if isinstance(chunk, str):  # never the first (server/chunks.py)
            return self._text(chunk) if chunk else b""
        out = b""
        if self._first:
            self._first = False
            message: JSON = {
                "id": message_id(chunk.id),
                "type": "message",
                "role": "assistant",
                "model": chunk.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": self._prompt, "output_tokens": 0},
            }
            out = named_event("message_start", {"type": "message_start", "message": message})
        for choice in chunk.choices:
            if choice.index:  # Anthropic's answers have one choice
                continue
            delta = choice.delta
            if delta.reasoning_content:
                if self._kind != "thinking":
                    out += self._open("thinking", _THINKING_START)
                out += self._delta({"type": "thinking_delta", "thinking": delta.reasoning_content})
            if delta.reasoning_signature:
                if self._kind != "thinking":
                    out += self._open("thinking", _THINKING_START)
                out += self._delta(
                    {"type": "signature_delta", "signature": delta.reasoning_signature}
                )
            if delta.content:
                out += self._text(delta.content)
            for piece in delta.tool_calls:
                ToolCallPieces.hold(self._tools, piece)
            if choice.finish_reason:
                out += self._finish(choice.finish_reason, _stop_sequence(choice))
        if chunk.HasField("usage"):
            out += self._finish("stop", None)
            out += named_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self._stop, "stop_sequence": self._stop_sequence},
                    "usage": _usage(chunk.usage),
                },
            )
            out += named_event("message_stop", {"type": "message_stop"})
        return out


def encode_model(model: models_pb2.Model) -> JSON:
    created = datetime.fromtimestamp(model.created, UTC).isoformat().replace("+00:00", "Z")
    return {"type": "model", "id": model.id, "display_name": model.id, "created_at": created}


def encode_models(models: models_pb2.ListModelsResponse) -> JSON:
    """Anthropic's page of models: all of them, so `has_more` is false."""
    data = [encode_model(model) for model in models.data]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


_stream: Callable[..., ItemEncoder] = StreamEncoder
