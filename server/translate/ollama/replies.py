"""Protos as Ollama's answers: `/api/chat`, `/api/generate`, the embeddings, the listings.

A stream is one JSON object per event, `done: false`, then a last object
with `done: true`, `done_reason`, the token counts and nanosecond durations.
Ollama sends a tool call whole, with object arguments, so the pieces of a
streamed call are gathered until the answer finishes and sent in one message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from tandem.v1 import chat_pb2, embeddings_pb2, models_pb2

from server.chunks import Item
from server.translate.protocols import JSON, ItemEncoder

__all__ = [
    "OLLAMA_VERSION",
    "StreamEncoder",
    "encode_completion",
    "encode_embed",
    "encode_embeddings",
    "encode_generate",
    "encode_load",
    "encode_ps",
    "encode_show",
    "encode_tags",
]

# what /api/version reports: a current Ollama release (v0.32.15, August 2026), so that
# no client's minimum (VS Code's Copilot asks for 0.6.4) turns the door away
OLLAMA_VERSION = "0.32.15"


def _now() -> str:
    """RFC 3339 in UTC with microseconds, as Ollama writes `created_at`."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _done_reason(finish_reason: str) -> str:
    return "length" if finish_reason == "length" else "stop"  # a tool call is a stop


def _counts(usage: chat_pb2.Usage, started: float, first_at: float | None) -> JSON:
    now = time.monotonic()
    first = first_at if first_at is not None else now
    return {
        "total_duration": int((now - started) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": int((first - started) * 1e9),
        "eval_count": usage.completion_tokens,
        "eval_duration": int((now - first) * 1e9),
    }


def _arguments(text: str) -> Any:
    try:
        return orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return text  # not JSON: passed on as the model wrote it


def _tool_call(call_id: str, name: str, arguments: str) -> JSON:
    """A whole call, with its id as Ollama sends one (where there is one)."""
    call: JSON = {"id": call_id} if call_id else {}
    call["function"] = {"name": name, "arguments": _arguments(arguments)}
    return call


def _tool_calls(calls: Iterable[chat_pb2.ToolCall]) -> list[JSON]:
    return [_tool_call(call.id, call.function.name, call.function.arguments) for call in calls]


def _message(content: str, calls: list[JSON] | None = None, thinking: str = "") -> JSON:
    message: JSON = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = calls
    return message


def encode_completion(completion: chat_pb2.ChatCompletion, started: float) -> JSON:
    choice = completion.choices[0]
    calls = _tool_calls(choice.message.tool_calls)
    return {
        "model": completion.model,
        "created_at": _now(),
        "message": _message(choice.message.content, calls, choice.message.reasoning_content),
        "done": True,
        "done_reason": _done_reason(choice.finish_reason),
        **_counts(completion.usage, started, None),
    }


def encode_generate(completion: chat_pb2.ChatCompletion, started: float) -> JSON:
    choice = completion.choices[0]
    return {
        "model": completion.model,
        "created_at": _now(),
        "response": choice.message.content,
        **(
            {"thinking": choice.message.reasoning_content}
            if choice.message.reasoning_content
            else {}
        ),
        "done": True,
        "done_reason": _done_reason(choice.finish_reason),
        **_counts(completion.usage, started, None),
    }


class StreamEncoder:
    """Writes a stream's chunks as Ollama's objects, each between `prefix` and `suffix`
    (NDJSON: nothing and a newline); the constant head is encoded once."""

    __slots__ = (
        "_calls",
        "_finish",
        "_first_at",
        "_generate",
        "_head",
        "_model",
        "_prefix",
        "_started",
        "_suffix",
        "_text_tail",
    )

    def __init__(
        self,
        first: chat_pb2.ChatCompletionChunk,
        *,
        generate: bool,
        started: float,
        prefix: bytes,
        suffix: bytes,
    ) -> None:
        self._model = first.model
        self._generate = generate
        self._started = started
        self._first_at = time.monotonic()
        self._prefix = prefix
        self._suffix = suffix
        head = orjson.dumps({"model": first.model, "created_at": _now()})[:-1]
        self._head = prefix + head + (b',"response":' if generate else b',"message":')
        text_tail = b',"done":false}' if generate else b'},"done":false}'
        self._text_tail = text_tail + suffix
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, argument pieces...]
        self._finish = ""

    def _text(self, text: str) -> bytes:
        if self._generate:
            return self._head + orjson.dumps(text) + self._text_tail
        return self._head + b'{"role":"assistant","content":' + orjson.dumps(text) + self._text_tail

    def _thinking(self, text: str) -> bytes:
        line: JSON = {"model": self._model, "created_at": _now()}
        if self._generate:
            line.update(response="", thinking=text)
        else:
            line["message"] = _message("", None, text)
        return self._prefix + orjson.dumps({**line, "done": False}) + self._suffix

    def encode(self, chunk: Item) -> bytes:
        if isinstance(chunk, str):
            return self._text(chunk) if chunk else b""
        out = b""
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # Ollama answers one choice
            delta = choice.delta
            if delta.reasoning_content:
                out += self._thinking(delta.reasoning_content)
            if delta.content:
                out += self._text(delta.content)
            for call in delta.tool_calls:
                pieces = self._calls.setdefault(call.index, ["", ""])
                if call.id:
                    pieces[0] = call.id
                if call.function.name:
                    pieces[1] = call.function.name
                pieces.append(call.function.arguments)
            if choice.finish_reason:
                self._finish = choice.finish_reason
        if chunk.HasField("usage"):  # the last chunk: gathered tool calls, then the end
            out += self._end(chunk.usage)
        return out

    def _end(self, usage: chat_pb2.Usage) -> bytes:
        out = b""
        if self._calls and not self._generate:
            calls = [
                _tool_call(pieces[0], pieces[1], "".join(pieces[2:]))
                for _, pieces in sorted(self._calls.items())
            ]
            line = {"model": self._model, "created_at": _now(), "message": _message("", calls)}
            out += self._prefix + orjson.dumps({**line, "done": False}) + self._suffix
        last = _last(self._model, self._generate, _done_reason(self._finish))
        last.update(_counts(usage, self._started, self._first_at))
        return out + self._prefix + orjson.dumps(last) + self._suffix


def _last(model: str, generate: bool, done_reason: str) -> JSON:
    """An answer's last object, before its counts: no more text."""
    last: JSON = {"model": model, "created_at": _now()}
    if generate:
        last["response"] = ""
    else:
        last["message"] = _message("")
    last["done"] = True
    last["done_reason"] = done_reason
    return last


def encode_load(model: str, *, generate: bool, unload: bool) -> JSON:
    """Ollama's answer to a chat with no messages (a generate with no prompt), how its
    clients load a model (and, with a zero `keep_alive`, unload it): one object,
    streamed or not, and nothing generated."""
    return _last(model, generate, "unload" if unload else "load")


def encode_embed(
    request: embeddings_pb2.EmbeddingRequest, answer: embeddings_pb2.EmbeddingResponse
) -> JSON:
    return {
        "model": answer.model,
        "embeddings": [list(item.embedding) for item in answer.data],
        "total_duration": 0,
        "load_duration": 0,
        "prompt_eval_count": answer.usage.prompt_tokens,
    }


def encode_embeddings(
    request: embeddings_pb2.EmbeddingRequest, answer: embeddings_pb2.EmbeddingResponse
) -> JSON:
    return {"embedding": list(answer.data[0].embedding) if answer.data else []}


def _details(model: models_pb2.Model) -> JSON:
    return {
        "parent_model": "",
        "format": "",
        "family": model.owned_by,
        "families": [model.owned_by],
        "parameter_size": "",
        "quantization_level": "",
    }


def _listed(model: models_pb2.Model) -> JSON:
    modified = datetime.fromtimestamp(model.created, UTC).isoformat().replace("+00:00", "Z")
    return {
        "name": model.id,
        "model": model.id,
        "modified_at": modified,
        "size": 0,
        "digest": "",
        "details": _details(model),
    }


def encode_tags(models: models_pb2.ListModelsResponse) -> JSON:
    return {"models": [_listed(m) for m in models.data]}


def encode_ps(models: models_pb2.ListModelsResponse) -> JSON:
    """Every model the caller may use is ready: the gateway loads nothing."""
    return {
        "models": [
            {
                **_listed(m),
                "expires_at": "9999-12-31T23:59:59Z",
                "size_vram": 0,
                "context_length": 0,
            }
            for m in models.data
        ]
    }


def encode_show(model: models_pb2.Model, capabilities: Iterable[str]) -> JSON:
    listed = _listed(model)
    return {
        "modified_at": listed["modified_at"],
        "template": "",
        "modelfile": "",
        "license": "",
        "parameters": "",
        "details": _details(model),
        "model_info": {},
        "capabilities": list(capabilities),
    }


_stream: Callable[..., ItemEncoder] = StreamEncoder
