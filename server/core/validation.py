"""Checks every door shares: a request that passes is one the core can serve.

Each failure is an `InvalidRequestError` naming the offending field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tandem.v1 import chat_pb2, embeddings_pb2

from server.errors import InvalidRequestError, echoed
from server.translate.common import check_cache_mark, check_stop_count
from server.translate.extra import check_extra_body, check_extra_body_json

__all__ = ["validate_anthropic_beta", "validate_chat_request", "validate_embedding_request"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
PART_TYPES = {
    "text": "text",
    "image_url": "image_url",
    "input_audio": "input_audio",
    "file": "file",
    "refusal": "refusal",
}
TOOL_CHOICE_MODES = frozenset({"none", "auto", "required"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
REASONING_EFFORTS = frozenset({"minimal", "low", "medium", "high"})  # OpenAI's values

# field -> (lowest, highest) for the optional numbers OpenAI bounds
_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "n": (1, 128),
    "max_tokens": (1, 2**31 - 1),
    "max_completion_tokens": (1, 2**31 - 1),
    "top_logprobs": (0, 20),
    "top_k": (1, 2**31 - 1),
    "reasoning_budget_tokens": (1, 2**31 - 1),
}


def _invalid(param: str, message: str) -> InvalidRequestError:
    param = echoed(param)  # a path may hold a client's map key
    return InvalidRequestError(f"{param}: {message}", param=param)


def validate_chat_request(request: chat_pb2.ChatCompletionRequest) -> None:
    if not request.messages:
        raise _invalid("messages", "at least one message is required")
    for field, value in request.ListFields():  # only the fields that are set
        name = field.name
        bounds = _RANGES.get(name)
        if bounds is not None:
            low, high = bounds
            if not low <= value <= high:
                raise _invalid(name, f"must be between {low:g} and {high:g}, got {value:g}")
        else:
            check = _FIELD_CHECKS.get(name)
            if check is not None:
                check(value)


def _check_messages(messages: Sequence[chat_pb2.ChatMessage]) -> None:
    for i, message in enumerate(messages):
        role = message.role
        if role not in ROLES:
            raise _invalid(f"messages[{i}].role", f"must be one of {sorted(ROLES)}")
        if message.parts:
            _check_parts(message, i)
        if role == "tool" and not message.tool_call_id:
            raise _invalid(f"messages[{i}].tool_call_id", "is required for role 'tool'")
        if message.tool_calls and role != "assistant":
            raise _invalid(f"messages[{i}].tool_calls", "only assistant messages make tool calls")
        if message.HasField("cache_control"):
            _check_mark(message.cache_control, f"messages[{i}].cache_control")
        for j, call in enumerate(message.tool_calls):
            if call.HasField("cache_control"):
                _check_mark(call.cache_control, f"messages[{i}].tool_calls[{j}].cache_control")


def _check_mark(mark: chat_pb2.CacheControl, where: str) -> None:
    check_cache_mark(mark.type, mark.ttl, where)


def _check_parts(message: chat_pb2.ChatMessage, i: int) -> None:
    if message.HasField("content"):
        raise _invalid(f"messages[{i}].content", "set content or parts, not both")
    for j, part in enumerate(message.parts):
        if part.type not in PART_TYPES:
            raise _invalid(
                f"messages[{i}].content[{j}].type", f"must be one of {sorted(PART_TYPES)}"
            )
        if part.WhichOneof("part") != PART_TYPES[part.type]:
            raise _invalid(f"messages[{i}].content[{j}].{part.type}", "is required")
        if part.type == "file" and not part.file.file_data:  # no files API: no file_id
            raise _invalid(f"messages[{i}].content[{j}].file.file_data", "is required")
        if part.HasField("cache_control"):
            _check_mark(part.cache_control, f"messages[{i}].content[{j}].cache_control")


def _check_logit_bias(logit_bias: Mapping[str, int]) -> None:
    for token, bias in logit_bias.items():
        if not -100 <= bias <= 100:
            raise _invalid(f"logit_bias.{token}", "must be between -100 and 100")


def _check_tools(tools: Sequence[chat_pb2.Tool]) -> None:
    for i, tool in enumerate(tools):
        if tool.type != "function":
            raise _invalid(f"tools[{i}].type", "must be 'function'")
        if not tool.function.name:
            raise _invalid(f"tools[{i}].function.name", "is required")
        if tool.HasField("cache_control"):
            _check_mark(tool.cache_control, f"tools[{i}].cache_control")


def _check_tool_choice(choice: chat_pb2.ToolChoice) -> None:
    if choice.mode:
        if choice.mode not in TOOL_CHOICE_MODES:
            raise _invalid("tool_choice", f"must be one of {sorted(TOOL_CHOICE_MODES)}")
    elif choice.type != "function" or not choice.function.name:
        raise _invalid("tool_choice", "name a function as {type: function, function: {name}}")


def _check_response_format(response_format: chat_pb2.ResponseFormat) -> None:
    kind = response_format.type
    if kind not in RESPONSE_FORMATS:
        raise _invalid("response_format.type", f"must be one of {sorted(RESPONSE_FORMATS)}")
    if kind == "json_schema" and not response_format.json_schema.name:
        raise _invalid("response_format.json_schema.name", "is required")


def _check_stop(stop: Sequence[str]) -> None:
    check_stop_count(len(stop), "stop")


def _check_reasoning_effort(effort: str) -> None:
    if effort not in REASONING_EFFORTS:
        raise _invalid("reasoning_effort", f"must be one of {sorted(REASONING_EFFORTS)}")


_FIELD_CHECKS: dict[str, Callable[[Any], None]] = {
    "messages": _check_messages,
    "logit_bias": _check_logit_bias,
    "tools": _check_tools,
    "tool_choice": _check_tool_choice,
    "response_format": _check_response_format,
    "reasoning_effort": _check_reasoning_effort,
    "stop": _check_stop,
    "extra_body": check_extra_body,
    "extra_body_json": check_extra_body_json,
}


# `anthropic-beta` is the caller's, sent on to an upstream: a bounded list of names
MAX_ANTHROPIC_BETA = 1024
_ANTHROPIC_BETA = re.compile(rf"[\x20-\x7e]{{0,{MAX_ANTHROPIC_BETA}}}")  # printable ASCII


def validate_anthropic_beta(value: str) -> None:
    if not _ANTHROPIC_BETA.fullmatch(value):
        raise _invalid(
            "anthropic-beta", f"must be at most {MAX_ANTHROPIC_BETA} printable ASCII characters"
        )


def validate_embedding_request(request: embeddings_pb2.EmbeddingRequest) -> None:
    if not request.input:
        raise _invalid("input", "at least one input is required")
    for i, text in enumerate(request.input):
        if not text:
            raise _invalid(f"input[{i}]", "must not be empty")
    if request.HasField("dimensions") and request.dimensions < 1:
        raise _invalid("dimensions", "must be at least 1")
