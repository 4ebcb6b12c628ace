"""The prompt's estimate: everything a request sends upstream to be read.

The contract's list: every message's text, tool calls and tool results,
reasoning sent back, tool definitions and response schemas (as their JSON
text), and 1,000 tokens for each image, audio or file part (its base64 bytes
are not what a model reads; the proto's media parts are `image_url`, `file` and
`input_audio`); and the request's extra fields, as their JSON text. The
core computes it once per request: admission reserves it, an answer without
the upstream's counts is charged it, and `count_tokens` answers it.
"""

from __future__ import annotations

from typing import Any

import orjson
from tandem.v1 import chat_pb2

from server.messages import estimate_tokens
from server.translate.common import response_schema, struct_to_json, tool_parameters

__all__ = ["MEDIA_PART_TOKENS", "estimate_prompt", "estimate_relayed_prompt", "texts_of"]

MEDIA_PART_TOKENS = 1000


def estimate_prompt(request: chat_pb2.ChatCompletionRequest) -> int:
    """The estimate of `request`'s prompt, in tokens (server.messages.estimate_tokens)."""
    total = 0
    for message in request.messages:
        if message.HasField("content"):
            total += estimate_tokens(message.content)
        else:
            for part in message.parts:
                kind = part.WhichOneof("part")
                if kind == "text":
                    total += estimate_tokens(part.text)
                elif kind == "refusal":
                    total += estimate_tokens(part.refusal)
                elif kind is not None:  # a media part
                    total += MEDIA_PART_TOKENS
        if message.HasField("reasoning_content"):
            total += estimate_tokens(message.reasoning_content)
        if message.HasField("refusal"):
            total += estimate_tokens(message.refusal)
        for call in message.tool_calls:
            function = call.function
            total += estimate_tokens(f"{function.name} {function.arguments}")
    for tool in request.tools:
        declared = tool.function
        definition: dict[str, Any] = {"name": declared.name, "description": declared.description}
        if (parameters := tool_parameters(declared)) is not None:
            definition["parameters"] = parameters
        total += _json_tokens(definition)
    if request.HasField("response_format") and request.response_format.HasField("json_schema"):
        schema = request.response_format.json_schema
        described: dict[str, Any] = {"name": schema.name, "description": schema.description}
        if (value := response_schema(schema)) is not None:
            described["schema"] = value
        total += _json_tokens(described)
    # fields beyond the proto's can carry prompt too (vLLM's `documents`, a legacy
    # `functions`): what is sent is estimated, whatever the upstream makes of it
    if request.HasField("extra_body_json"):
        total += estimate_tokens(request.extra_body_json)
    elif request.HasField("extra_body"):
        total += _json_tokens(struct_to_json(request.extra_body))
    return total


def _json_tokens(value: dict[str, Any]) -> int:
    """The estimate of `value`'s JSON text (a schema seen before is encoded already)."""
    return estimate_tokens(orjson.dumps(value).decode())


# a Responses request's parts the model sees as media, not text
_MEDIA_PARTS = frozenset({"input_image", "input_file", "input_audio"})
# keys of a Responses item that name or mark it, and an upstream's sealed reasoning:
# nothing the model reads as text
_NOT_READ = frozenset({"type", "id", "call_id", "status", "role", "encrypted_content"})


def texts_of(value: Any, texts: list[str]) -> int:
    """Append the texts a model reads in a Responses item (or list of them, or a
    string) to `texts`; the tokens of its media parts (`MEDIA_PART_TOKENS` each)."""
    if isinstance(value, str):
        texts.append(value)
        return 0
    media = 0
    if isinstance(value, list):
        for item in value:
            media += texts_of(item, texts)
    elif isinstance(value, dict):
        if value.get("type") in _MEDIA_PARTS:
            return MEDIA_PART_TOKENS
        for key, item in value.items():
            if key not in _NOT_READ:
                media += texts_of(item, texts)
    return media


def estimate_relayed_prompt(body: dict[str, Any]) -> int:
    """The estimate of a Responses request relayed as it is (core/relay.py): the texts
    of its `input` and `instructions`, its `tools` and `text` (the schema) as their JSON
    text, and `MEDIA_PART_TOKENS` for each media part."""
    texts: list[str] = []
    total = texts_of(body.get("input"), texts) + texts_of(body.get("instructions"), texts)
    for key in ("tools", "text"):
        if (value := body.get(key)) is not None:
            texts.append(orjson.dumps(value).decode())
    return total + (estimate_tokens("\n".join(texts)) if texts else 0)
