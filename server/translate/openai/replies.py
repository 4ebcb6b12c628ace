"""Protos as OpenAI's exact reply shapes (the native ones are these without `object`).

Encoders write from proto fields and keep zero values (`index: 0`,
`prompt_tokens: 0`) and numbers as numbers, which `MessageToDict` does not.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from tandem.v1 import chat_pb2, embeddings_pb2, models_pb2

from server.chunks import Item
from server.translate.protocols import JSON, ItemEncoder

__all__ = [
    "StreamEncoder",
    "TextStreamEncoder",
    "encode_completion",
    "encode_embeddings",
    "encode_model",
    "encode_models",
    "encode_text_completion",
    "encode_tool_calls",
]


def _details(usage: chat_pb2.Usage) -> JSON:
    """OpenAI's `*_tokens_details`, where the upstream said them; cache writes, which
    OpenAI's shape lacks, as OpenRouter's `cache_write_tokens` beside the reads."""
    out: JSON = {}
    if usage.HasField("prompt_tokens_details"):
        details = usage.prompt_tokens_details
        prompt: JSON = {"cached_tokens": details.cached_tokens}
        if details.cache_write_tokens:
            prompt["cache_write_tokens"] = details.cache_write_tokens
        out["prompt_tokens_details"] = prompt
    if usage.HasField("completion_tokens_details"):
        reasoning = usage.completion_tokens_details.reasoning_tokens
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return out


def _usage(usage: chat_pb2.Usage) -> JSON:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        **_details(usage),
    }


def encode_tool_calls(calls: Iterable[chat_pb2.ToolCall], *, with_index: bool) -> list[JSON]:
    out = []
    for call in calls:
        item: JSON = {"index": call.index} if with_index else {}
        if call.id:
            item["id"] = call.id
        if call.type:
            item["type"] = call.type
        function: JSON = {}
        if call.function.name:
            function["name"] = call.function.name
        if call.function.arguments or not with_index:
            function["arguments"] = call.function.arguments
        item["function"] = function
        out.append(item)
    return out


def _logprobs(choice: chat_pb2.Choice | chat_pb2.ChunkChoice) -> JSON | None:
    if not choice.HasField("logprobs"):
        return None

    def token(t: chat_pb2.TokenLogprob | chat_pb2.TopLogprob) -> JSON:
        return {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}

    def tokens(items: Iterable[chat_pb2.TokenLogprob]) -> list[JSON]:
        return [{**token(t), "top_logprobs": [token(top) for top in t.top_logprobs]} for t in items]

    logprobs = choice.logprobs
    return {"content": tokens(logprobs.content), "refusal": tokens(logprobs.refusal) or None}


def _message(message: chat_pb2.ChatMessage) -> JSON:
    out: JSON = {
        "role": message.role or "assistant",
        "content": message.content if message.HasField("content") else None,
        "refusal": message.refusal if message.HasField("refusal") else None,
    }
    if message.tool_calls:
        out["tool_calls"] = encode_tool_calls(message.tool_calls, with_index=False)
    _reasoning(message, out)
    return out


def _reasoning(source: chat_pb2.ChatMessage | chat_pb2.Delta, out: JSON) -> None:
    """DeepSeek's `reasoning_content`, and the signature a client sends back with it."""
    if source.HasField("reasoning_content"):
        out["reasoning_content"] = source.reasoning_content
    if source.HasField("reasoning_signature"):
        out["reasoning_signature"] = source.reasoning_signature


def _head(id_: str, kind: str, created: int, *, with_object: bool) -> JSON:
    """An object's first keys: its id, its `object` (OpenAI's, not native), its time."""
    out: JSON = {"id": id_}
    if with_object:
        out["object"] = kind
    out["created"] = created
    return out


def encode_completion(completion: chat_pb2.ChatCompletion, *, with_object: bool) -> JSON:
    out = _head(completion.id, "chat.completion", completion.created, with_object=with_object)
    out["model"] = completion.model
    out["choices"] = [
        _stop_sequence(
            choice,
            {
                "index": choice.index,
                "message": _message(choice.message),
                "logprobs": _logprobs(choice),
                "finish_reason": choice.finish_reason or None,
            },
            native=not with_object,
        )
        for choice in completion.choices
    ]
    out["usage"] = _usage(completion.usage)
    out["system_fingerprint"] = completion.system_fingerprint or None
    return out


def _delta(delta: chat_pb2.Delta) -> JSON:
    out: JSON = {}
    if delta.HasField("role"):
        out["role"] = delta.role
    if delta.HasField("content"):
        out["content"] = delta.content
    if delta.HasField("refusal"):
        out["refusal"] = delta.refusal
    if delta.tool_calls:
        out["tool_calls"] = encode_tool_calls(delta.tool_calls, with_index=True)
    _reasoning(delta, out)
    return out


def _stop_sequence(
    choice: chat_pb2.Choice | chat_pb2.ChunkChoice, out: JSON, *, native: bool
) -> JSON:
    """The proto's `stop_sequence`, where the upstream said it: on the native door only
    (OpenAI's shape has no such field)."""
    if native and choice.HasField("stop_sequence"):
        out["stop_sequence"] = choice.stop_sequence
    return out


def _chunk_choices(chunk: chat_pb2.ChatCompletionChunk, *, native: bool) -> list[JSON]:
    out = []
    for choice in chunk.choices:
        item: JSON = {
            "index": choice.index,
            "delta": _delta(choice.delta),
            "logprobs": _logprobs(choice),
            "finish_reason": choice.finish_reason if choice.HasField("finish_reason") else None,
        }
        if native and choice.HasField("stop_sequence"):  # as `_stop_sequence`, inline
            item["stop_sequence"] = choice.stop_sequence
        out.append(item)
    return out


_TEXT_HEAD = b'[{"index":0,"delta":{"content":'
_TEXT_TAIL = b'},"logprobs":null,"finish_reason":null}]}'
_TEXT_TAIL_NULL_USAGE = b'},"logprobs":null,"finish_reason":null}],"usage":null}'


class StreamEncoder:
    """Writes a stream's chunks as OpenAI's chunk objects, the constant head encoded once.

    Each object is one event, written between the `prefix` and `suffix` of the
    door's framing (SSE's `data: ` and blank line) in the same concatenation
    that writes the object, so framing costs no copy of its own.

    `usage` decides where usage goes: "inline" on the chunk that has it
    (native), "separate" as a last chunk with `choices: []` and `usage: null`
    on the others (OpenAI with `include_usage`), or "none" (OpenAI without).
    """

    __slots__ = ("_end", "_head", "_native", "_text_tail", "_usage")

    def __init__(
        self,
        first: chat_pb2.ChatCompletionChunk,
        *,
        with_object: bool,
        usage: str,
        prefix: bytes,
        suffix: bytes,
    ) -> None:
        head = _head(first.id, "chat.completion.chunk", first.created, with_object=with_object)
        head["model"] = first.model
        if first.system_fingerprint:
            head["system_fingerprint"] = first.system_fingerprint
        # '{"id":..,"model":".."' + ',"choices":' : every object starts the same way
        self._head = prefix + orjson.dumps(head)[:-1] + b',"choices":'
        self._end = b"}" + suffix
        self._text_tail = (_TEXT_TAIL_NULL_USAGE if usage == "separate" else _TEXT_TAIL) + suffix
        self._usage = usage
        self._native = not with_object

    def encode(self, chunk: Item) -> bytes:
        """One chunk as one event, or two (its choices, then its usage: "separate")."""
        if isinstance(chunk, str):  # the common case, written without building dicts
            return self._head + _TEXT_HEAD + orjson.dumps(chunk) + self._text_tail
        has_usage = chunk.HasField("usage")
        usage_mode = self._usage
        if usage_mode == "inline":
            tail = b',"usage":' + orjson.dumps(_usage(chunk.usage)) if has_usage else b""
            return (
                self._head
                + orjson.dumps(_chunk_choices(chunk, native=self._native))
                + tail
                + self._end
            )
        events = b""
        if chunk.choices or not has_usage:
            tail = b',"usage":null' if usage_mode == "separate" else b""
            events = (
                self._head
                + orjson.dumps(_chunk_choices(chunk, native=self._native))
                + tail
                + self._end
            )
        if has_usage and usage_mode == "separate":
            events += self._head + b'[],"usage":' + orjson.dumps(_usage(chunk.usage)) + self._end
        return events


def _text_completion_id(chat_id: str) -> str:
    return "cmpl-" + chat_id.removeprefix("chatcmpl-")


def encode_text_completion(completion: chat_pb2.ChatCompletion) -> JSON:
    """A chat answer as OpenAI's legacy `text_completion` (`/v1/completions`)."""
    return {
        "id": _text_completion_id(completion.id),
        "object": "text_completion",
        "created": completion.created,
        "model": completion.model,
        "choices": [
            {
                "text": choice.message.content,
                "index": choice.index,
                "logprobs": None,
                "finish_reason": choice.finish_reason or None,
            }
            for choice in completion.choices
        ],
        "usage": _usage(completion.usage),
        "system_fingerprint": completion.system_fingerprint or None,
    }


_TEXT_CHOICE_TAIL = b',"index":0,"logprobs":null,"finish_reason":null}]'


class TextStreamEncoder:
    """Writes a chat stream as OpenAI's legacy `text_completion` chunks: each choice's
    text delta (a delta with neither text nor an end writes nothing), and `usage` on a
    last chunk with `choices: []` ("separate", with `include_usage`) or not at all
    ("none"), as `StreamEncoder` does."""

    __slots__ = ("_end", "_head", "_tail", "_usage")

    def __init__(
        self, first: chat_pb2.ChatCompletionChunk, *, usage: str, prefix: bytes, suffix: bytes
    ) -> None:
        head = {
            "id": _text_completion_id(first.id),
            "object": "text_completion",
            "created": first.created,
            "model": first.model,
        }
        self._head = prefix + orjson.dumps(head)[:-1] + b',"choices":'
        self._end = b"}" + suffix
        self._tail = (b',"usage":null' if usage == "separate" else b"") + self._end
        self._usage = usage

    def encode(self, chunk: Item) -> bytes:
        if isinstance(chunk, str):
            return self._head + b'[{"text":' + orjson.dumps(chunk) + _TEXT_CHOICE_TAIL + self._tail
        choices = [
            {
                "text": choice.delta.content,
                "index": choice.index,
                "logprobs": None,
                "finish_reason": choice.finish_reason if choice.HasField("finish_reason") else None,
            }
            for choice in chunk.choices
            if choice.delta.content or choice.HasField("finish_reason")
        ]
        events = self._head + orjson.dumps(choices) + self._tail if choices else b""
        if chunk.HasField("usage") and self._usage == "separate":
            events += self._head + b'[],"usage":' + orjson.dumps(_usage(chunk.usage)) + self._end
        return events


def encode_embeddings(
    response: embeddings_pb2.EmbeddingResponse, *, with_object: bool, encoding_format: str
) -> JSON:
    data = []
    for item in response.data:
        vector: Any = list(item.embedding)
        if encoding_format == "base64":
            packed = struct.pack(f"<{len(vector)}f", *vector)
            vector = base64.b64encode(packed).decode()
        entry: JSON = {"object": "embedding"} if with_object else {}
        entry["index"] = item.index
        entry["embedding"] = vector
        data.append(entry)
    out: JSON = {"object": "list"} if with_object else {}
    out["data"] = data
    out["model"] = response.model
    out["usage"] = {
        "prompt_tokens": response.usage.prompt_tokens,
        "total_tokens": response.usage.total_tokens,
    }
    return out


def encode_model(model: models_pb2.Model, *, with_object: bool, with_price: bool = False) -> JSON:
    """OpenAI's model object; `with_price` (the native door): and its `price`, or null."""
    out = _head(model.id, "model", model.created, with_object=with_object)
    out["owned_by"] = model.owned_by
    if with_price:
        out["price"] = _price(model.price) if model.HasField("price") else None
    return out


def _price(price: models_pb2.Price) -> JSON:
    """Each decimal string as the exact JSON number it spells (0.15, never 0.1499...)."""
    return {
        name: orjson.Fragment(value.encode()) if (value := getattr(price, name)) else None
        for name in _PRICE_FIELDS
    }


_PRICE_FIELDS = tuple(field.name for field in models_pb2.Price.DESCRIPTOR.fields)


def encode_models(
    models: models_pb2.ListModelsResponse, *, with_object: bool, with_price: bool = False
) -> JSON:
    data = [encode_model(m, with_object=with_object, with_price=with_price) for m in models.data]
    return {"object": "list", "data": data} if with_object else {"data": data}


_stream: Callable[..., ItemEncoder] = StreamEncoder
_text_stream: Callable[..., ItemEncoder] = TextStreamEncoder
