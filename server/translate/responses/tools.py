"""A Responses request's tools as chat functions, and the names to map calls back.

A chat upstream knows only functions, so:
- a `function` tool is one as it is;
- a `custom` (freeform) tool, Codex's `apply_patch`, is a function of one string
  argument, `input` (its grammar, if it has one, told in the description); its
  calls come back as `custom_tool_call` items carrying that string;
- a `namespace` tool's functions (and custom tools) are functions named
  `<namespace>__<name>`; their calls come back under their own name, with
  `namespace` set.
Hosted tools (`web_search`, ...) are left out (`inbound.unread` names them).

The map from the name a chat upstream calls to the tool the caller named is made
per request (`ToolNames.of`) and given to the encoders with the settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from server.translate.common import invalid_field, string_at
from server.translate.protocols import JSON

__all__ = [
    "CUSTOM_INPUT",
    "Named",
    "ToolNames",
    "custom_arguments",
    "custom_input",
    "read_tools",
    "wire_name",
]

CUSTOM_INPUT = "input"  # the one argument of a custom tool's function
NAMESPACE_JOINER = "__"


@dataclass(frozen=True, slots=True)
class Named:
    """A tool as the caller named it."""

    kind: Literal["function", "custom"]
    name: str
    namespace: str | None = None


def wire_name(name: str, namespace: str | None) -> str:
    """The function name a chat upstream sees for a (namespaced) tool."""
    return f"{namespace}{NAMESPACE_JOINER}{name}" if namespace else name


class ToolNames:
    """The request's tools by the function name a chat upstream calls them by."""

    __slots__ = ("_by_wire",)

    def __init__(self, by_wire: dict[str, Named] | None = None) -> None:
        self._by_wire = by_wire or {}

    @classmethod
    def of(cls, tools: Any) -> ToolNames:
        """The names of a request's `tools` (read already by `read_tools`)."""
        return read_tools(tools)[1] if tools else NO_TOOLS

    def named(self, wire: str) -> Named:
        """The tool an upstream's call of `wire` is; a name the request did not offer is
        a function of that name."""
        return self._by_wire.get(wire) or Named("function", wire)


NO_TOOLS = ToolNames()


def _function(tool: JSON, where: str, namespace: str | None) -> tuple[JSON, Named]:
    name = string_at(tool.get("name"), f"{where}.name")
    function: JSON = {"name": wire_name(name, namespace)}
    if tool.get("description") is not None:
        function["description"] = string_at(tool["description"], f"{where}.description")
    if tool.get("parameters") is not None:
        function["parameters"] = tool["parameters"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return function, Named("function", name, namespace)


def _grammar(form: Any, where: str) -> str:
    """What a custom tool's `format` tells the model, in its description."""
    if form is None:
        return ""
    if not isinstance(form, dict):
        raise invalid_field(where, "must be a JSON object")
    if form.get("type") != "grammar":
        return ""
    syntax = string_at(form.get("syntax", "lark"), f"{where}.syntax")
    definition = string_at(form.get("definition"), f"{where}.definition")
    return f"The input is plain text (not JSON) in this {syntax} grammar:\n{definition}"


def _custom(tool: JSON, where: str, namespace: str | None) -> tuple[JSON, Named]:
    name = string_at(tool.get("name"), f"{where}.name")
    told = (
        [string_at(tool["description"], f"{where}.description")] if tool.get("description") else []
    )
    if grammar := _grammar(tool.get("format"), f"{where}.format"):
        told.append(grammar)
    function: JSON = {
        "name": wire_name(name, namespace),
        "parameters": {
            "type": "object",
            "properties": {
                CUSTOM_INPUT: {"type": "string", "description": "The tool's whole input."}
            },
            "required": [CUSTOM_INPUT],
            "additionalProperties": False,
        },
    }
    if told:
        function["description"] = "\n\n".join(told)
    return function, Named("custom", name, namespace)


_READERS = {"function": _function, "custom": _custom}


def read_tools(tools: Any) -> tuple[list[JSON], ToolNames]:
    """(the chat tools, their names); hosted tools are left out."""
    if not isinstance(tools, list):
        raise invalid_field("tools", "must be a list")
    functions: list[JSON] = []
    by_wire: dict[str, Named] = {}

    def add(tool: JSON, where: str, namespace: str | None) -> None:
        function, named = _READERS[tool["type"]](tool, where, namespace)
        if function["name"] in by_wire:
            raise invalid_field(f"{where}.name", "names a tool already offered")
        by_wire[function["name"]] = named
        functions.append({"type": "function", "function": function})

    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise invalid_field(where, "must be a JSON object")
        kind = tool.get("type")
        if kind in _READERS:
            add(tool, where, None)
        elif kind == "namespace":
            namespace = string_at(tool.get("name"), f"{where}.name")
            inner = tool.get("tools")
            if not isinstance(inner, list):
                raise invalid_field(f"{where}.tools", "must be a list")
            for j, member in enumerate(inner):
                if not isinstance(member, dict):
                    raise invalid_field(f"{where}.tools[{j}]", "must be a JSON object")
                if member.get("type") in _READERS:
                    add(member, f"{where}.tools[{j}]", namespace)
    return functions, ToolNames(by_wire)


def custom_arguments(text: str) -> str:
    """A custom tool call's input as its function's arguments."""
    return orjson.dumps({CUSTOM_INPUT: text}).decode()


def custom_input(arguments: str) -> str:
    """A custom tool's input from its function's arguments; arguments that are not
    `{"input": "..."}` (a model that wrote the input bare) are the input as they are."""
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(value, dict) and isinstance(text := value.get(CUSTOM_INPUT), str):
        return text
    return arguments
