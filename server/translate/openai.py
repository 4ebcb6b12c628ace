"""OpenAI's JSON dialect: requests into protos, protos into OpenAI's exact shapes.

The native HTTP format is this dialect made strict: the same request shapes
(with unknown fields refused) and the same reply shapes without the
constant `object` keys, so that `json_format.ParseDict` reads them back.

Encoders write from proto fields and keep zero values (`index: 0`,
`prompt_tokens: 0`) and numbers as numbers, which `MessageToDict` does not.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Iterable
from typing import Any

import orjson
from google.protobuf import json_format, struct_pb2
from tandem.v1 import chat_pb2, embeddings_pb2, models_pb2

from server.errors import InvalidRequestError, UpstreamError
from server.translate.protojson import parse_into

__all__ = [
    "ChunkEncoder",
    "chat_request_to_openai",
    "chunk_from_openai",
    "completion_as_chunk",
    "embedding_request_to_openai",
    "embeddings_from_openai",
    "encode_completion",
    "encode_embeddings",
    "encode_model",
    "encode_models",
    "message_to_openai",
    "normalize_chat_body",
    "parse_chat_request",
    "parse_embedding_request",
]

JSON = dict[str, Any]


# --- requests ---------------------------------------------------------------------------


def normalize_chat_body(body: JSON) -> JSON:
    """Rewrite OpenAI's union forms into the proto's single forms.

    `stop: "x"` -> `["x"]`; `tool_choice: "auto"` -> `{mode: "auto"}`;
    a message's list `content` -> `parts`. Returns a shallow copy when
    anything changes; the input is never modified.
    """
    out = body
    stop = body.get("stop")
    if isinstance(stop, str):
        out = {**out, "stop": [stop]}
    tool_choice = body.get("tool_choice")
    if isinstance(tool_choice, str):
        out = {**out, "tool_choice": {"mode": tool_choice}}
    messages = body.get("messages")
    if isinstance(messages, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), list) for m in messages
    ):
        out = {**out, "messages": [_content_to_parts(m) for m in messages]}
    return out


def _content_to_parts(message: Any) -> Any:
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        return message
    converted = {k: v for k, v in message.items() if k != "content"}
    converted["parts"] = message["content"]
    return converted


def parse_chat_request(body: Any, *, strict: bool) -> chat_pb2.ChatCompletionRequest:
    """An OpenAI chat request (or a native one, with `strict=True`) as a proto."""
    if not isinstance(body, dict):
        raise InvalidRequestError("body: must be a JSON object", param="body")
    request = chat_pb2.ChatCompletionRequest()
    try:
        parse_into(normalize_chat_body(body), request, strict=strict)
    except InvalidRequestError as exc:
        raise _as_sent(exc, body) from None
    return request


_PARTS_PATH = re.compile(r"^messages\[(\d+)\]\.parts")


def _as_sent(error: InvalidRequestError, body: JSON) -> InvalidRequestError:
    """Name `content`, not `parts`, where the caller sent its parts as `content`."""
    match = _PARTS_PATH.match(error.param or "")
    messages = body.get("messages")
    if match and isinstance(messages, list):
        index = int(match.group(1))
        if (
            index < len(messages)
            and isinstance(messages[index], dict)
            and "content" in messages[index]
        ):
            param = f"messages[{index}].content" + error.param[match.end() :]  # type: ignore[index]
            message = error.message.replace(error.param or "", param, 1)
            return InvalidRequestError(message, param=param)
    return error


def parse_embedding_request(body: Any, *, strict: bool) -> embeddings_pb2.EmbeddingRequest:
    """An embeddings request; `input` may be one string or a list of strings."""
    if not isinstance(body, dict):
        raise InvalidRequestError("body: must be a JSON object", param="body")
    text = body.get("input")
    if isinstance(text, str):
        body = {**body, "input": [text]}
    elif isinstance(text, list) and text and not isinstance(text[0], str):
        raise InvalidRequestError("input: token arrays are not supported; send text", param="input")
    request = embeddings_pb2.EmbeddingRequest()
    parse_into(body, request, strict=strict)
    if request.encoding_format not in ("", "float", "base64"):
        raise InvalidRequestError(
            "encoding_format: must be 'float' or 'base64'", param="encoding_format"
        )
    return request


# --- replies ----------------------------------------------------------------------------


def _usage(usage: chat_pb2.Usage) -> JSON:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _tool_calls(calls: Iterable[chat_pb2.ToolCall], *, with_index: bool) -> list[JSON]:
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
        out["tool_calls"] = _tool_calls(message.tool_calls, with_index=False)
    return out


def encode_completion(completion: chat_pb2.ChatCompletion, *, with_object: bool) -> JSON:
    out: JSON = {"id": completion.id}
    if with_object:
        out["object"] = "chat.completion"
    out["created"] = completion.created
    out["model"] = completion.model
    out["choices"] = [
        {
            "index": choice.index,
            "message": _message(choice.message),
            "logprobs": _logprobs(choice),
            "finish_reason": choice.finish_reason or None,
        }
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
        out["tool_calls"] = _tool_calls(delta.tool_calls, with_index=True)
    return out


def _chunk_choices(chunk: chat_pb2.ChatCompletionChunk) -> list[JSON]:
    return [
        {
            "index": choice.index,
            "delta": _delta(choice.delta),
            "logprobs": _logprobs(choice),
            "finish_reason": choice.finish_reason if choice.HasField("finish_reason") else None,
        }
        for choice in chunk.choices
    ]


_TEXT_HEAD = b'[{"index":0,"delta":{"content":'
_TEXT_TAIL = b'},"logprobs":null,"finish_reason":null}]}\n\n'
_TEXT_TAIL_NULL_USAGE = b'},"logprobs":null,"finish_reason":null}],"usage":null}\n\n'


def _plain_text_delta(choice: chat_pb2.ChunkChoice) -> str | None:
    """The content of a delta of choice 0 that carries nothing but content."""
    delta = choice.delta
    if (
        choice.index == 0
        and delta.HasField("content")
        and not delta.HasField("role")
        and not delta.tool_calls
        and not delta.HasField("refusal")
        and not choice.HasField("finish_reason")
        and not choice.HasField("logprobs")
    ):
        return delta.content
    return None


class ChunkEncoder:
    """Writes a stream's chunks as SSE events, the constant head encoded once.

    `usage` decides where usage goes: "inline" on the chunk that has it
    (native), "separate" as a last chunk with `choices: []` and `usage: null`
    on the others (OpenAI with `include_usage`), or "none" (OpenAI without).
    """

    __slots__ = ("_head", "_usage")

    def __init__(
        self, first: chat_pb2.ChatCompletionChunk, *, with_object: bool, usage: str
    ) -> None:
        head: JSON = {"id": first.id}
        if with_object:
            head["object"] = "chat.completion.chunk"
        head["created"] = first.created
        head["model"] = first.model
        if first.system_fingerprint:
            head["system_fingerprint"] = first.system_fingerprint
        # '{"id":..,"model":".."' + ',"choices":' : every event starts the same way
        self._head = b"data: " + orjson.dumps(head)[:-1] + b',"choices":'
        self._usage = usage

    def encode(self, chunk: chat_pb2.ChatCompletionChunk) -> bytes:
        """One chunk as one or two `data: {...}\\n\\n` events."""
        has_usage = chunk.HasField("usage")
        usage_mode = self._usage
        if not has_usage and len(chunk.choices) == 1:
            text = _plain_text_delta(chunk.choices[0])
            if text is not None:  # the common case, written without building dicts
                tail = _TEXT_TAIL_NULL_USAGE if usage_mode == "separate" else _TEXT_TAIL
                return self._head + _TEXT_HEAD + orjson.dumps(text) + tail
        if usage_mode == "inline":
            tail = b',"usage":' + orjson.dumps(_usage(chunk.usage)) if has_usage else b""
            return self._head + orjson.dumps(_chunk_choices(chunk)) + tail + b"}\n\n"
        events = b""
        if chunk.choices or not has_usage:
            tail = b',"usage":null}\n\n' if usage_mode == "separate" else b"}\n\n"
            events = self._head + orjson.dumps(_chunk_choices(chunk)) + tail
        if has_usage and usage_mode == "separate":
            events += self._head + b'[],"usage":' + orjson.dumps(_usage(chunk.usage)) + b"}\n\n"
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


def encode_model(model: models_pb2.Model, *, with_object: bool) -> JSON:
    out: JSON = {"id": model.id}
    if with_object:
        out["object"] = "model"
    out["created"] = model.created
    out["owned_by"] = model.owned_by
    return out


def encode_models(models: models_pb2.ListModelsResponse, *, with_object: bool) -> JSON:
    data = [encode_model(m, with_object=with_object) for m in models.data]
    return {"object": "list", "data": data} if with_object else {"data": data}


# --- upstream: what an OpenAI-compatible server is sent, and what it answers -------------

_SCALAR_FIELDS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "parallel_tool_calls",
        "user",
    }
)


def _struct(value: struct_pb2.Struct) -> JSON:
    return json_format.MessageToDict(value)


def _part_to_openai(part: chat_pb2.ContentPart) -> JSON:
    kind = part.WhichOneof("part")
    if kind == "image_url":
        image: JSON = {"url": part.image_url.url}
        if part.image_url.detail:
            image["detail"] = part.image_url.detail
        return {"type": "image_url", "image_url": image}
    if kind == "input_audio":
        audio = {"data": part.input_audio.data, "format": part.input_audio.format}
        return {"type": "input_audio", "input_audio": audio}
    if kind == "refusal":
        return {"type": "refusal", "refusal": part.refusal}
    return {"type": "text", "text": part.text}


def message_to_openai(message: chat_pb2.ChatMessage) -> JSON:
    out: JSON = {"role": message.role}
    if message.HasField("content"):
        out["content"] = message.content
    elif message.parts:
        out["content"] = [_part_to_openai(p) for p in message.parts]
    else:
        out["content"] = None if message.tool_calls else ""
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = _tool_calls(message.tool_calls, with_index=False)
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.HasField("refusal"):
        out["refusal"] = message.refusal
    return out


def _tool_to_openai(tool: chat_pb2.Tool) -> JSON:
    function: JSON = {"name": tool.function.name}
    if tool.function.description:
        function["description"] = tool.function.description
    if tool.function.HasField("parameters"):
        function["parameters"] = _struct(tool.function.parameters)
    if tool.function.HasField("strict"):
        function["strict"] = tool.function.strict
    return {"type": tool.type or "function", "function": function}


def _response_format_to_openai(response_format: chat_pb2.ResponseFormat) -> JSON:
    out: JSON = {"type": response_format.type}
    if response_format.type == "json_schema":
        schema = response_format.json_schema
        inner: JSON = {"name": schema.name}
        if schema.description:
            inner["description"] = schema.description
        if schema.HasField("schema"):
            inner["schema"] = _struct(schema.schema)
        if schema.HasField("strict"):
            inner["strict"] = schema.strict
        out["json_schema"] = inner
    return out


def chat_request_to_openai(
    request: chat_pb2.ChatCompletionRequest, model: str, *, stream: bool
) -> JSON:
    """The request for an OpenAI-compatible upstream: every field set passes through.

    A stream always asks for `include_usage`, so that usage is known; whether
    the caller sees it is the door's decision.
    """
    body: JSON = {"model": model}
    for field, value in request.ListFields():
        name = field.name
        if name in _SCALAR_FIELDS:
            body[name] = value
        elif name == "messages":
            body[name] = [message_to_openai(m) for m in value]
        elif name == "stop":
            body[name] = list(value)
        elif name == "logit_bias":
            body[name] = dict(value)
        elif name == "tools":
            body[name] = [_tool_to_openai(t) for t in value]
        elif name == "tool_choice":
            body[name] = value.mode or {
                "type": "function",
                "function": {"name": value.function.name},
            }
        elif name == "response_format":
            body[name] = _response_format_to_openai(value)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


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


def _raise_upstream_error(data: JSON) -> None:
    """An OpenAI-compatible server may report a failure inside a 200: as an event or a body."""
    if data.get("error") is not None:
        error = data["error"]
        kind = error.get("type") if isinstance(error, dict) else None
        retryable = kind in ("server_error", "overloaded_error", "rate_limit_error", None)
        raise UpstreamError(f"upstream provider failed: {kind or 'error'}", retryable=retryable)


def chunk_from_openai(data: JSON) -> chat_pb2.ChatCompletionChunk:
    """One upstream stream event as a chunk (a usage-only event has no choices)."""
    _raise_upstream_error(data)
    chunk = chat_pb2.ChatCompletionChunk()
    for item in data.get("choices") or ():
        choice = chunk.choices.add(index=item.get("index") or 0)
        delta = item.get("delta") or {}
        target = choice.delta
        if delta.get("role") is not None:
            target.role = delta["role"]
        if delta.get("content") is not None:
            target.content = delta["content"]
        if delta.get("refusal") is not None:
            target.refusal = delta["refusal"]
        if delta.get("tool_calls"):
            _fill_tool_calls(target.tool_calls, delta["tool_calls"], indexed=True)
        if item.get("finish_reason") is not None:
            choice.finish_reason = item["finish_reason"]
        if item.get("logprobs"):
            parse_into(item["logprobs"], choice.logprobs, strict=False)
    if data.get("usage"):  # on the last chunk only
        _fill_usage(chunk, data["usage"])
    if data.get("system_fingerprint"):
        chunk.system_fingerprint = data["system_fingerprint"]
    return chunk


def completion_as_chunk(data: JSON) -> chat_pb2.ChatCompletionChunk:
    """A whole upstream completion as the one chunk of an unchunked answer."""
    _raise_upstream_error(data)
    chunk = chat_pb2.ChatCompletionChunk()
    for item in data.get("choices") or ():
        choice = chunk.choices.add(index=item.get("index") or 0)
        message = item.get("message") or {}
        delta = choice.delta
        delta.role = message.get("role") or "assistant"
        if message.get("content") is not None:
            delta.content = message["content"]
        if message.get("refusal") is not None:
            delta.refusal = message["refusal"]
        if message.get("tool_calls"):
            _fill_tool_calls(delta.tool_calls, message["tool_calls"], indexed=False)
        choice.finish_reason = item.get("finish_reason") or "stop"
        if item.get("logprobs"):
            parse_into(item["logprobs"], choice.logprobs, strict=False)
    _fill_usage(chunk, data.get("usage"))
    if data.get("system_fingerprint"):
        chunk.system_fingerprint = data["system_fingerprint"]
    return chunk


def embedding_request_to_openai(request: embeddings_pb2.EmbeddingRequest, model: str) -> JSON:
    body: JSON = {"model": model, "input": list(request.input), "encoding_format": "float"}
    if request.HasField("dimensions"):
        body["dimensions"] = request.dimensions
    if request.user:
        body["user"] = request.user
    return body


def embeddings_from_openai(data: JSON) -> embeddings_pb2.EmbeddingResponse:
    response = embeddings_pb2.EmbeddingResponse()
    for position, item in enumerate(data["data"]):
        response.data.add(index=item.get("index", position), embedding=item["embedding"])
    usage = data.get("usage")
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(prompt, int):  # else the core estimates it
        response.usage.prompt_tokens = response.usage.total_tokens = prompt
    return response
