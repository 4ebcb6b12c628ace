"""A door's OpenAI (or native, strict) JSON request as a proto."""

from __future__ import annotations

import re
from typing import Any

import orjson
from tandem.v1 import chat_pb2, embeddings_pb2

from server.errors import InvalidRequestError
from server.translate.extra import CHAT_FIELDS, fields_beyond
from server.translate.protocols import JSON, ChatParser, EmbeddingParser
from server.translate.protojson import parse_into

__all__ = [
    "normalize_chat_body",
    "parse_chat",
    "parse_completion_request",
    "parse_embedding",
]


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


def parse_chat(body: Any, *, strict: bool = False) -> chat_pb2.ChatCompletionRequest:
    """An OpenAI chat request (or a native one, with `strict=True`) as a proto.

    OpenAI's fields the proto lacks (`store`, `metadata`, a vLLM server's own)
    are kept, in the caller's order, as `extra_body_json`: after the caller's
    own `extra_body`, if it sent one too. Native refuses them.
    """
    if not isinstance(body, dict):
        raise InvalidRequestError("body: must be a JSON object", param="body")
    request = chat_pb2.ChatCompletionRequest()
    try:
        parse_into(normalize_chat_body(body), request, strict=strict)
    except InvalidRequestError as exc:
        raise _as_sent(exc, body) from None
    if not strict and not body.keys() <= CHAT_FIELDS:
        extra = fields_beyond(body, CHAT_FIELDS)
        if request.HasField("extra_body_json"):  # the caller's own `extra_body`, as text
            extra = {**orjson.loads(request.extra_body_json), **extra}
        if extra:
            request.extra_body_json = orjson.dumps(extra).decode()
    return request


# a legacy text completion's fields a chat cannot honour, and the value of each that
# asks for nothing (JSON null, "not set", never does)
_UNSUPPORTED = {"suffix": None, "echo": False, "best_of": 1, "logprobs": None}


def parse_completion_request(body: Any) -> chat_pb2.ChatCompletionRequest:
    """A legacy text completion (`/v1/completions`) as a one-message chat: its `prompt`,
    one string, the user's message. `suffix`, `echo`, `best_of` and `logprobs` are
    refused by name unless they ask for nothing; the rest is a chat's."""
    if not isinstance(body, dict):
        raise InvalidRequestError("body: must be a JSON object", param="body")
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        raise InvalidRequestError(
            "prompt: must be one string; a list of prompts (or of tokens) is not supported",
            param="prompt",
        )
    if not isinstance(prompt, str):
        raise InvalidRequestError("prompt: must be a string", param="prompt")
    if "messages" in body:
        raise InvalidRequestError(
            "messages: a text completion sends a prompt; chats go to /v1/chat/completions",
            param="messages",
        )
    for name, unasked in _UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and (type(value), value) != (type(unasked), unasked):
            raise InvalidRequestError(
                f"{name}: is not supported: a text completion is served as a chat", param=name
            )
    chat = {
        key: value for key, value in body.items() if key != "prompt" and key not in _UNSUPPORTED
    }
    chat["messages"] = [{"role": "user", "content": prompt}]
    return parse_chat(chat)


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


def parse_embedding(body: Any, *, strict: bool = False) -> embeddings_pb2.EmbeddingRequest:
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


# OpenAI's (lax) by default: the native door asks for `strict`
_chat: ChatParser = parse_chat
_embedding: EmbeddingParser = parse_embedding
