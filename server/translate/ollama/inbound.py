"""A door's Ollama request (`/api/chat`, `/api/generate`, `/api/embed`,
`/api/embeddings`) as a proto.

Ollama's shapes: sampling under `options` (`num_predict` is `max_tokens`; its
-1, Ollama's default, and -2 mean no limit, as in Ollama),
images as bare base64 beside a message, tool call arguments as objects,
`format` as "json" or a JSON schema, `stream` true unless said otherwise.
`think` is `reasoning_effort`, a message's `thinking` its `reasoning_content`.
Unknown fields and load-time options (`num_ctx`, `keep_alive`, ...) are
ignored as Ollama does, but for a zero `keep_alive` on a load (`unloads`); what
the gateway cannot do (`suffix`, `context`, `raw`, `template`) is refused by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson
from tandem.v1 import chat_pb2, embeddings_pb2

from server.translate.common import check_stop_count, invalid_field
from server.translate.ollama import SAMPLING_OPTIONS
from server.translate.protocols import JSON, ChatParser, EmbeddingParser
from server.translate.protojson import parse_field_as

__all__ = [
    "parse_chat",
    "parse_embedding",
    "parse_generate",
    "parse_legacy_embeddings",
    "resolve_tag",
    "unloads",
]

# Ollama's option -> the proto's field
_OPTIONS = {
    **{name: name for name in SAMPLING_OPTIONS},
    "num_predict": "max_tokens",
    "stop": "stop",
}
# `num_predict` values that mean no limit: -1 (Ollama's default) and -2 (fill the context)
_NO_LIMIT = (-1, -2)
_REFUSED = {
    "suffix": "fill-in-the-middle is not available through the gateway",
    "context": "token contexts are not available through the gateway; send the messages",
    "raw": "raw prompts are not available through the gateway",
    "template": "templates are not available through the gateway",
}
# Go's `time.ParseDuration` (Ollama's `keep_alive` as a string): its units in nanoseconds,
# a whole duration, and one of its terms
_GO_UNITS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "μs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_GO_UNIT = "(ns|us|µs|μs|ms|s|m|h)"
_GO_DURATION = re.compile(rf"[-+]?(?:0|(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+){_GO_UNIT})+)")
_GO_TERM = re.compile(rf"([0-9]*)\.?([0-9]*){_GO_UNIT}")
# the first bytes of an image, base64: what its media type is
_IMAGE_TYPES = {
    "iVBOR": "image/png",
    "/9j/": "image/jpeg",
    "R0lG": "image/gif",
    "UklG": "image/webp",
}


def _object(body: Any) -> JSON:
    if not isinstance(body, dict):
        raise invalid_field("body", "must be a JSON object")
    return body


def _model(body: JSON, request: Any) -> None:
    model = body.get("model")
    if model is not None:
        parse_field_as(request, "model", model, "model")


def _images(images: Any, where: str) -> list[JSON]:
    if not isinstance(images, list):
        raise invalid_field(where, "must be a list of base64 strings")
    parts = []
    for i, image in enumerate(images):
        if not isinstance(image, str) or not image:
            raise invalid_field(f"{where}[{i}]", "must be a base64 string")
        media = next((m for head, m in _IMAGE_TYPES.items() if image.startswith(head)), "image/png")
        parts.append({"type": "image_url", "image_url": {"url": f"data:{media};base64,{image}"}})
    return parts


def _tool_calls(calls: Any, where: str, ids: str) -> list[JSON]:
    if not isinstance(calls, list):
        raise invalid_field(where, "must be a list")
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid_field(f"{where}[{i}].function", "must be an object with a name")
        arguments = function.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise invalid_field(f"{where}[{i}].function.arguments", "must be a JSON object")
        given = call.get("id")  # as Ollama sends it, where it does
        out.append(
            {
                "id": given if isinstance(given, str) and given else f"{ids}_{i}",
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": orjson.dumps(arguments).decode(),
                },
            }
        )
    return out


def _message(message: Any, where: str, ids: str = "call") -> JSON:
    """An Ollama message in the proto's JSON form; its tool calls' ids, where the caller
    sent none, start with `ids`."""
    if not isinstance(message, dict):
        raise invalid_field(where, "must be a JSON object")
    out: JSON = {"role": message.get("role")}
    content = message.get("content")
    images = message.get("images")
    if images:
        text = [{"type": "text", "text": content}] if content else []
        out["parts"] = text + _images(images, f"{where}.images")
    elif content is not None:
        out["content"] = content
    if message.get("tool_calls"):
        out["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls", ids)
    if message.get("tool_name") is not None:
        out["name"] = message["tool_name"]
    if out["role"] == "tool" and isinstance(message.get("tool_call_id"), str):
        out["tool_call_id"] = message["tool_call_id"]
    if message.get("thinking"):
        out["reasoning_content"] = message["thinking"]
    return out


def _link_tool_results(messages: list[JSON]) -> None:
    """Ollama's tool results name the call (`tool_call_id`) or only the tool: each takes
    the id of the call it names, else of the first unanswered call of that tool (else
    the first unanswered) of the turn before it."""
    pending: list[JSON] = []
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            pending = list(message.get("tool_calls", ()))
        elif message.get("role") == "tool":
            if not pending:
                raise invalid_field(
                    f"messages[{i}]", "a tool result must follow an assistant message's tool_calls"
                )
            named = message.get("tool_call_id")
            name = message.get("name")
            call = next((c for c in pending if c["id"] == named), None) or next(
                (c for c in pending if c["function"]["name"] == name), pending[0]
            )
            pending.remove(call)
            message["tool_call_id"] = call["id"]


def _options(options: Any, request: chat_pb2.ChatCompletionRequest) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise invalid_field("options", "must be a JSON object")
    for name, field in _OPTIONS.items():
        value = options.get(name)
        if value is None:
            continue
        if name == "stop" and isinstance(value, str):
            value = [value]
        elif name == "num_predict" and type(value) in (int, float) and value < 1:
            if value in _NO_LIMIT:
                continue
            raise invalid_field(
                "options.num_predict", "must be at least 1, or -1 or -2 for no limit"
            )
        parse_field_as(request, field, value, f"options.{name}")
    check_stop_count(len(request.stop), "options.stop")


def _format(value: Any, request: chat_pb2.ChatCompletionRequest) -> None:
    if value in (None, ""):
        return
    if value == "json":
        request.response_format.type = "json_object"
    elif isinstance(value, dict):
        parse_field_as(
            request,
            "response_format",
            {"type": "json_schema", "json_schema": {"name": "response", "schema": value}},
            "format",
        )
    else:
        raise invalid_field("format", 'must be "json" or a JSON schema object')


def _think(value: Any, request: chat_pb2.ChatCompletionRequest) -> None:
    """`think`: true is a medium effort, false none; gpt-oss's levels pass as they are."""
    if value is None or value is False:
        return
    if value is True:
        request.reasoning_effort = "medium"
    elif value in ("low", "medium", "high"):
        request.reasoning_effort = value
    else:
        raise invalid_field("think", 'must be true, false, "low", "medium" or "high"')


def _common(body: JSON, request: chat_pb2.ChatCompletionRequest) -> None:
    """What chat and generate share: model, stream (default true), options, format, tools."""
    for name, why in _REFUSED.items():
        if body.get(name):
            raise invalid_field(name, why)
    _model(body, request)
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise invalid_field("stream", "must be a boolean")
    request.stream = stream
    _options(body.get("options"), request)
    _format(body.get("format"), request)
    _think(body.get("think"), request)
    if body.get("tools"):
        parse_field_as(request, "tools", body["tools"], "tools")


def parse_chat(body: Any) -> chat_pb2.ChatCompletionRequest:
    body = _object(body)
    request = chat_pb2.ChatCompletionRequest()
    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise invalid_field("messages", "must be a list")
    converted = [_message(m, f"messages[{i}]", f"call_{i}") for i, m in enumerate(messages or ())]
    _link_tool_results(converted)
    parse_field_as(request, "messages", converted, "messages")
    _common(body, request)
    return request


def parse_generate(body: Any) -> chat_pb2.ChatCompletionRequest:
    """`/api/generate`: a `prompt` (and `system`, `images`) as a one-turn chat; without
    a prompt, no messages (Ollama's load)."""
    body = _object(body)
    request = chat_pb2.ChatCompletionRequest()
    messages: list[JSON] = []
    for name in ("system", "prompt"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise invalid_field(name, "must be a string")
    prompt = body.get("prompt")
    if prompt:  # else no messages: Ollama's load, whatever else is sent
        if body.get("system"):
            messages.append({"role": "system", "content": body["system"]})
        if body.get("images"):
            parts = [{"type": "text", "text": prompt}, *_images(body["images"], "images")]
            messages.append({"role": "user", "parts": parts})
        else:
            messages.append({"role": "user", "content": prompt})
    parse_field_as(request, "messages", messages, "messages")
    _common(body, request)
    return request


def _embedding_request(body: Any) -> tuple[JSON, embeddings_pb2.EmbeddingRequest]:
    """The body (a JSON object) and a request naming its model."""
    body = _object(body)
    request = embeddings_pb2.EmbeddingRequest()
    _model(body, request)
    return body, request


def parse_embedding(body: Any) -> embeddings_pb2.EmbeddingRequest:
    """`/api/embed`: `input` one string or a list of them; `dimensions`, `truncate`."""
    body, request = _embedding_request(body)
    text = body.get("input")
    parse_field_as(request, "input", [text] if isinstance(text, str) else text, "input")
    if body.get("dimensions") is not None:
        parse_field_as(request, "dimensions", body["dimensions"], "dimensions")
    return request


def parse_legacy_embeddings(body: Any) -> embeddings_pb2.EmbeddingRequest:
    """The older `/api/embeddings`: one `prompt`, one vector."""
    body, request = _embedding_request(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise invalid_field("prompt", "must be a string")
    request.input.append(prompt)
    return request


def unloads(body: Any) -> bool:
    """Whether a load's `keep_alive` is zero as Ollama reads it (seconds, or a Go duration
    such as "0" or "0s"), which makes it Ollama's unload."""
    keep_alive = _object(body).get("keep_alive")
    if isinstance(keep_alive, int | float) and not isinstance(keep_alive, bool):
        return keep_alive >= 0 and int(keep_alive * 1e9) == 0  # Go truncates to whole ns
    if type(keep_alive) is not str or not _GO_DURATION.fullmatch(keep_alive):
        return False
    return all(  # every term under a nanosecond
        not int(whole or "0") and int(fraction or "0") * _GO_UNITS[unit] < 10 ** len(fraction)
        for whole, fraction, unit in _GO_TERM.findall(keep_alive)
    )


def resolve_tag(name: str, known: Callable[[str], bool]) -> str:
    """Ollama's `name:latest` is `name`, unless a model is configured as `name:latest`."""
    if known(name) or not name.endswith(":latest"):
        return name
    return name.removesuffix(":latest")


_chat: ChatParser = parse_chat
_embedding: EmbeddingParser = parse_embedding
