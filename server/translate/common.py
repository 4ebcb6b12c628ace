"""What the provider dialects share: refusing what a provider cannot honour, data URLs,
tool call arguments as JSON objects."""

from __future__ import annotations

import re
from typing import Any

import orjson
from tandem.v1 import chat_pb2

from server.errors import InvalidRequestError

__all__ = ["DATA_URL", "cannot_honour", "tool_arguments"]

DATA_URL = re.compile(r"data:(?P<media>[\w/+.-]+);base64,(?P<data>.*)", re.S)


def cannot_honour(param: str, why: str) -> InvalidRequestError:
    """A 400 naming a field the target provider cannot honour."""
    return InvalidRequestError(
        f"{param}: {why} (not supported by this model's provider)", param=param
    )


def tool_arguments(call: chat_pb2.ToolCall, where: str) -> Any:
    """A tool call's JSON arguments as an object, for dialects that do not take a string."""
    try:
        return orjson.loads(call.function.arguments or "{}")
    except orjson.JSONDecodeError:
        param = f"{where}.function.arguments"
        raise InvalidRequestError(f"{param}: must be a JSON object", param=param) from None
