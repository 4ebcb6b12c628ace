"""Checks every door shares: a request that passes is one the core can serve.

Each failure is an `InvalidRequestError` naming the offending field.
"""

from __future__ import annotations

from tandem.v1 import chat_pb2, embeddings_pb2

from server.core.errors import InvalidRequestError

__all__ = ["validate_chat_request", "validate_embedding_request"]

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
PART_TYPES = {"text": "text", "image_url": "image_url", "input_audio": "input_audio"}
TOOL_CHOICE_MODES = frozenset({"none", "auto", "required"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})

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
}


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)


def validate_chat_request(request: chat_pb2.ChatCompletionRequest) -> None:
    if not request.messages:
        raise _invalid("messages", "at least one message is required")
    for i, message in enumerate(request.messages):
        _validate_message(message, f"messages[{i}]")
    for name, (low, high) in _RANGES.items():
        if request.HasField(name):  # type: ignore[arg-type]
            value = getattr(request, name)
            if not low <= value <= high:
                raise _invalid(name, f"must be between {low:g} and {high:g}, got {value:g}")
    for token, bias in request.logit_bias.items():
        if not -100 <= bias <= 100:
            raise _invalid(f"logit_bias.{token}", "must be between -100 and 100")
    for i, tool in enumerate(request.tools):
        if tool.type != "function":
            raise _invalid(f"tools[{i}].type", "must be 'function'")
        if not tool.function.name:
            raise _invalid(f"tools[{i}].function.name", "is required")
    _validate_tool_choice(request)
    if request.HasField("response_format"):
        kind = request.response_format.type
        if kind not in RESPONSE_FORMATS:
            raise _invalid("response_format.type", f"must be one of {sorted(RESPONSE_FORMATS)}")
        if kind == "json_schema" and not request.response_format.json_schema.name:
            raise _invalid("response_format.json_schema.name", "is required")


def _validate_message(message: chat_pb2.ChatMessage, where: str) -> None:
    if message.role not in ROLES:
        raise _invalid(f"{where}.role", f"must be one of {sorted(ROLES)}")
    if message.HasField("content") and message.parts:
        raise _invalid(f"{where}.content", "set content or parts, not both")
    for j, part in enumerate(message.parts):
        if part.type not in PART_TYPES:
            raise _invalid(f"{where}.content[{j}].type", f"must be one of {sorted(PART_TYPES)}")
        if part.WhichOneof("part") != PART_TYPES[part.type]:
            raise _invalid(f"{where}.content[{j}].{part.type}", "is required")
    if message.role == "tool" and not message.tool_call_id:
        raise _invalid(f"{where}.tool_call_id", "is required for role 'tool'")
    if message.tool_calls and message.role != "assistant":
        raise _invalid(f"{where}.tool_calls", "only assistant messages make tool calls")


def _validate_tool_choice(request: chat_pb2.ChatCompletionRequest) -> None:
    if not request.HasField("tool_choice"):
        return
    choice = request.tool_choice
    if choice.mode:
        if choice.mode not in TOOL_CHOICE_MODES:
            raise _invalid("tool_choice", f"must be one of {sorted(TOOL_CHOICE_MODES)}")
    elif choice.type != "function" or not choice.function.name:
        raise _invalid("tool_choice", "name a function as {type: function, function: {name}}")


def validate_embedding_request(request: embeddings_pb2.EmbeddingRequest) -> None:
    if not request.input:
        raise _invalid("input", "at least one input is required")
    for i, text in enumerate(request.input):
        if not text:
            raise _invalid(f"input[{i}]", "must not be empty")
    if request.HasField("dimensions") and request.dimensions < 1:
        raise _invalid("dimensions", "must be at least 1")
