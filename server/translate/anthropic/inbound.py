"""A door's Anthropic Messages request (`/v1/messages`, `/count_tokens`) as a proto.

`system` (a string or text blocks) is the first message; a turn's blocks
become the proto's: `text` and `image` (base64 or url) parts, `tool_use` the
assistant's tool calls (input as JSON arguments), `thinking` its
`reasoning_content` and `reasoning_signature`, each `tool_result` a `tool`
message of its own before the rest of its user turn; a `system` turn (Claude
Code sends them) is a system message. Blocks stay blocks, one part each, so
that an Anthropic upstream gets them as they were (a prompt cache matches a
prefix exactly): only one plain text block is the message's `content`. A
block's `cache_control` is its part's, its tool call's (`tool_use`) or its
tool message's (`tool_result`); a tool's is the tool's. `max_tokens` is
required, as Anthropic requires it; `stop_sequences` is `stop`,
`metadata.user_id` is `user`, `thinking.budget_tokens` (at least 1024, as
Anthropic requires) is `reasoning_budget_tokens`, so it reaches an Anthropic
upstream as it is (`adaptive` thinking leaves it to the model: nothing is
asked for, so a model that does not reason is not refused),
tools' `input_schema` their parameters, and `tool_choice` `auto` / `any` /
`tool` / `none` OpenAI's `auto` / `required` / a function / `none`. An
unknown block is refused by name.

Anthropic's other top-level fields (`context_management`, `output_config`,
`container`, `mcp_servers`, ...) are kept, in the caller's order, as
`extra_body_json`, for an Anthropic upstream (server/translate/extra.py). What
the proto cannot carry is named by `unread`: a top-level key the proto has
but this door does not read (`n`), ignored as before, and a tool's or
`thinking`'s unknown keys (`tools[].defer_loading`, `thinking.display`).
"""

from __future__ import annotations

from typing import Any

import orjson
from tandem.v1 import chat_pb2

from server.translate.anthropic import MIN_THINKING_BUDGET
from server.translate.common import check_cache_mark, check_stop_count, invalid_field, string_at
from server.translate.extra import CHAT_FIELDS, fields_beyond
from server.translate.protocols import JSON, ChatParser
from server.translate.protojson import parse_field_as

__all__ = ["parse_chat", "parse_count_tokens", "unread"]


# the top-level fields this door reads: every other is kept for an Anthropic upstream,
# unless the proto has a field of its name (the gateway decides those: ignored)
READ = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "metadata",
        "thinking",
        "stream",
    }
)
_NOT_EXTRA = READ | CHAT_FIELDS
# the keys of a tool and of `thinking` the proto carries
_TOOL_KEYS = frozenset({"type", "name", "description", "input_schema", "cache_control"})
_THINKING_KEYS = frozenset({"type", "budget_tokens"})


def _marked(out: JSON, block: JSON, where: str) -> JSON:
    """`out` with the block's `cache_control`, if it has one (type, and ttl if set)."""
    mark = block.get("cache_control")
    if mark is not None:
        if not isinstance(mark, dict):
            raise invalid_field(f"{where}.cache_control", "must be a JSON object")
        kept = {"type": string_at(mark.get("type"), f"{where}.cache_control.type")}
        if mark.get("ttl") is not None:
            kept["ttl"] = string_at(mark["ttl"], f"{where}.cache_control.ttl")
        check_cache_mark(kept["type"], kept.get("ttl", ""), f"{where}.cache_control")
        out["cache_control"] = kept
    return out


def _text_part(block: Any, where: str) -> JSON:
    if not isinstance(block, dict) or block.get("type") != "text":
        raise invalid_field(where, "must be a text block")
    return _marked(
        {"type": "text", "text": string_at(block.get("text"), f"{where}.text")}, block, where
    )


def _content(out: JSON, parts: list[JSON]) -> None:
    """The parts as `out`'s content: one plain text block is a string, the rest stay parts."""
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        out["content"] = parts[0]["text"]
    elif parts:
        out["parts"] = parts


def _system(system: Any) -> JSON:
    if isinstance(system, str):
        return {"role": "system", "content": system}
    if not isinstance(system, list):
        raise invalid_field("system", "must be a string or a list of text blocks")
    out: JSON = {"role": "system"}
    _content(out, [_text_part(block, f"system[{i}]") for i, block in enumerate(system)])
    return out


def _image(source: Any, where: str) -> JSON:
    if not isinstance(source, dict):
        raise invalid_field(where, "must be an object")
    if source.get("type") == "base64":
        media = string_at(source.get("media_type"), f"{where}.media_type")
        data = string_at(source.get("data"), f"{where}.data")
        url = f"data:{media};base64,{data}"
    elif source.get("type") == "url":
        url = string_at(source.get("url"), f"{where}.url")
    else:
        raise invalid_field(f"{where}.type", 'must be "base64" or "url"')
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: JSON, where: str) -> JSON:
    """A `tool_result` block as a tool message; an error's text says so first."""
    out: JSON = {
        "role": "tool",
        "tool_call_id": string_at(block.get("tool_use_id"), f"{where}.tool_use_id"),
    }
    content = block.get("content")
    at = f"{where}.content"
    if content is None or isinstance(content, str):
        parts = [{"type": "text", "text": content or ""}]
    elif isinstance(content, list):
        parts = [_text_part(item, f"{at}[{i}]") for i, item in enumerate(content)]
        parts = parts or [{"type": "text", "text": ""}]
    else:
        raise invalid_field(at, "must be a string or a list of text blocks")
    if block.get("is_error"):
        parts[0]["text"] = f"Error: {parts[0]['text']}"
    _content(out, parts)
    return _marked(out, block, where)


def _turn(message: Any, where: str) -> list[JSON]:
    """One Anthropic turn as proto-form messages: its tool results first, each a
    `tool` message, then the turn itself (if anything is left of it)."""
    if not isinstance(message, dict):
        raise invalid_field(where, "must be a JSON object")
    role = message.get("role")
    if role not in ("user", "assistant", "system"):  # Claude Code sends system turns too
        raise invalid_field(f"{where}.role", 'must be "user", "assistant" or "system"')
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise invalid_field(f"{where}.content", "must be a string or a list of blocks")
    results: list[JSON] = []
    parts: list[JSON] = []
    calls: list[JSON] = []
    out: JSON = {"role": role}
    for i, block in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_part(block, at))
        elif kind == "image":
            parts.append(_marked(_image(block.get("source"), f"{at}.source"), block, at))
        elif kind == "tool_use" and role == "assistant":
            arguments = block.get("input") if block.get("input") is not None else {}
            if not isinstance(arguments, dict):
                raise invalid_field(f"{at}.input", "must be a JSON object")
            call = {
                "id": string_at(block.get("id"), f"{at}.id"),
                "type": "function",
                "function": {
                    "name": string_at(block.get("name"), f"{at}.name"),
                    "arguments": orjson.dumps(arguments).decode(),
                },
            }
            calls.append(_marked(call, block, at))
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, at))
        elif kind == "thinking" and role == "assistant":
            out["reasoning_content"] = string_at(block.get("thinking"), f"{at}.thinking")
            if block.get("signature"):
                out["reasoning_signature"] = string_at(block["signature"], f"{at}.signature")
        elif kind == "redacted_thinking" and role == "assistant":
            continue  # encrypted for Anthropic alone: nothing another model can read
        else:
            raise invalid_field(f"{at}.type", f"a {kind!r} block cannot be sent in a {role} turn")
    _content(out, parts)
    if calls:
        out["tool_calls"] = calls
    keep = parts or calls or "reasoning_content" in out or not results
    return [*results, out] if keep else results


def _tools(tools: Any) -> list[JSON]:
    if not isinstance(tools, list):
        raise invalid_field("tools", "must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise invalid_field(f"tools[{i}]", "must be a JSON object")
        if tool.get("type") not in (None, "custom"):
            raise invalid_field(
                f"tools[{i}].type", "only custom tools (with input_schema) are served"
            )
        function: JSON = {"name": string_at(tool.get("name"), f"tools[{i}].name")}
        if tool.get("description") is not None:
            function["description"] = string_at(tool["description"], f"tools[{i}].description")
        if tool.get("input_schema") is not None:
            function["parameters"] = tool["input_schema"]
        out.append(_marked({"type": "function", "function": function}, tool, f"tools[{i}]"))
    return out


def _tool_choice(choice: Any, request: chat_pb2.ChatCompletionRequest) -> None:
    if not isinstance(choice, dict):
        raise invalid_field("tool_choice", "must be a JSON object")
    kind = choice.get("type")
    if kind == "auto":
        request.tool_choice.mode = "auto"
    elif kind == "any":
        request.tool_choice.mode = "required"
    elif kind == "none":
        request.tool_choice.mode = "none"
    elif kind == "tool":
        request.tool_choice.type = "function"
        request.tool_choice.function.name = string_at(choice.get("name"), "tool_choice.name")
    else:
        raise invalid_field("tool_choice.type", 'must be "auto", "any", "tool" or "none"')
    if choice.get("disable_parallel_tool_use") is True:
        request.parallel_tool_calls = False


def _thinking(thinking: Any, request: chat_pb2.ChatCompletionRequest) -> None:
    if not isinstance(thinking, dict):
        raise invalid_field("thinking", "must be a JSON object")
    kind = thinking.get("type")
    if kind in ("disabled", "adaptive"):  # adaptive: the model decides, as it would unasked
        return
    if kind != "enabled":
        raise invalid_field("thinking.type", 'must be "enabled", "adaptive" or "disabled"')
    budget = thinking.get("budget_tokens")
    if budget is None:
        raise invalid_field("thinking.budget_tokens", "is required with thinking enabled")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_THINKING_BUDGET:
        raise invalid_field(
            "thinking.budget_tokens", f"must be an integer of at least {MIN_THINKING_BUDGET}"
        )
    parse_field_as(request, "reasoning_budget_tokens", budget, "thinking.budget_tokens")


def _conversation(body: Any) -> tuple[JSON, chat_pb2.ChatCompletionRequest]:
    """What both routes read: model, system, messages, tools, tool_choice, thinking."""
    if not isinstance(body, dict):
        raise invalid_field("body", "must be a JSON object")
    request = chat_pb2.ChatCompletionRequest()
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_field("model", "is required")
    request.model = model
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_field("messages", "must be a non-empty list")
    converted: list[JSON] = []
    if body.get("system"):
        converted.append(_system(body["system"]))
    for i, message in enumerate(messages):
        converted.extend(_turn(message, f"messages[{i}]"))
    parse_field_as(request, "messages", converted, "messages")
    if body.get("tools"):
        parse_field_as(request, "tools", _tools(body["tools"]), "tools")
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], request)
    if body.get("thinking") is not None:
        _thinking(body["thinking"], request)
    if not _NOT_EXTRA.issuperset(body) and (extra := fields_beyond(body, _NOT_EXTRA)):
        request.extra_body_json = orjson.dumps(extra).decode()  # Anthropic's, kept in order
    return body, request


def unread(body: Any) -> list[str]:
    """What of a Messages request (parsed already) the proto cannot carry, each named
    once: a top-level field the proto has but this door does not read, a tool's keys
    beyond `_TOOL_KEYS` (`tools[].defer_loading`), `thinking`'s beyond `_THINKING_KEYS`."""
    names: dict[str, None] = {}  # in order, once each
    if not _NOT_EXTRA.issuperset(body):
        _add(names, "", body, READ, only=CHAT_FIELDS)
    for tool in body.get("tools") or ():
        if not _TOOL_KEYS.issuperset(tool):
            _add(names, "tools[].", tool, _TOOL_KEYS)
    thinking = body.get("thinking")
    if thinking and not _THINKING_KEYS.issuperset(thinking):
        _add(names, "thinking.", thinking, _THINKING_KEYS)
    return list(names)


def _add(
    names: dict[str, None],
    prefix: str,
    holder: JSON,
    read: frozenset[str],
    only: frozenset[str] | None = None,
) -> None:
    """`holder`'s keys that are set and not `read` (and in `only`, if given), prefixed."""
    for key, value in holder.items():
        if key not in read and value is not None and (only is None or key in only):
            names[prefix + key] = None


def parse_chat(body: Any) -> chat_pb2.ChatCompletionRequest:
    body, request = _conversation(body)
    if body.get("max_tokens") is None:
        raise invalid_field("max_tokens", "is required")
    parse_field_as(request, "max_tokens", body["max_tokens"], "max_tokens")
    if request.max_tokens < 1:
        raise invalid_field("max_tokens", "must be at least 1")
    for field, name in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if body.get(name) is not None:
            parse_field_as(request, field, body[name], name)
    stop = body.get("stop_sequences")
    if stop:
        parse_field_as(request, "stop", stop, "stop_sequences")
        check_stop_count(len(request.stop), "stop_sequences")
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id") is not None:
        request.user = string_at(metadata["user_id"], "metadata.user_id")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid_field("stream", "must be a boolean")
    request.stream = stream
    return request


def parse_count_tokens(body: Any) -> chat_pb2.ChatCompletionRequest:
    """`/v1/messages/count_tokens`: the conversation alone (no `max_tokens`)."""
    return _conversation(body)[1]


_chat: ChatParser = parse_chat
