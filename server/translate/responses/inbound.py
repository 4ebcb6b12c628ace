"""A door's OpenAI Responses request (`POST /v1/responses`) as a proto.

`input` is a string (one user message) or items: messages (`role` user,
assistant, system or developer, the last a system message; `content` a string
or `input_text` / `output_text` / `input_image` / `input_file` parts),
`function_call` and `custom_tool_call` (an assistant's tool call, joined to the
assistant message before it; a custom tool's `input` as the arguments
`{"input": ...}`, a `namespace` joined to the name: tools.py),
`function_call_output` and `custom_tool_call_output` (a `tool` message, its
image parts kept) and `reasoning` (its sealed `encrypted_content` opened, else
its `reasoning_text`: the next assistant message's `reasoning_content`, and
`reasoning_signature` where it was signed; none, if a user's message comes
first). A token that does not open is left out and named, never a 400.
`instructions` is the first, system, message; `max_output_tokens` is
`max_completion_tokens`, `reasoning.effort` `reasoning_effort`, `text.format`
the `response_format` (a `json_schema`'s schema kept as the JSON text the
caller wrote), `safety_identifier` the `user` where no `user` is given; tools
are chat functions (tools.py).

Hosted tools (`web_search`, `file_search`, ...) are left out and named by
`unread`, with Responses fields the proto cannot carry (`include` beyond
`reasoning.encrypted_content`, `truncation`, ...); other top-level fields follow
`/v1`'s rule (`extra_body_json`, server/translate/extra.py). `background: true`,
`conversation` and `prompt` are a 400. `store` and `previous_response_id` are the
route's (the stored chain comes before `input`; `item_reference`s are resolved
before this reads them: one left is a 400).
"""

from __future__ import annotations

from typing import Any

import orjson
from tandem.v1 import chat_pb2

from server.errors import echoed
from server.translate.common import invalid_field, string_at
from server.translate.extra import CHAT_FIELDS, fields_beyond
from server.translate.protocols import JSON, ChatParser
from server.translate.protojson import parse_field_as
from server.translate.responses.seal import SealBroken, Sealer
from server.translate.responses.tools import ToolNames, custom_arguments, read_tools, wire_name

__all__ = ["parse_chat", "settings", "tool_names", "unread"]

# the top-level fields this door reads
READ = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_output_tokens",
        "temperature",
        "top_p",
        "reasoning",
        "text",
        "user",
        "safety_identifier",
        "metadata",
        "stream",
        "store",
        "background",
        "previous_response_id",
        "conversation",
        "prompt",
    }
)
# Responses fields the proto cannot carry: named by `unread`, never sent upstream
KNOWN_UNREAD = frozenset(
    {
        "include",
        "truncation",
        "top_logprobs",
        "max_tool_calls",
        "stream_options",
        "prompt_cache_retention",
        "context_management",
        "client_metadata",  # Codex's (its installation id): no chat API takes it
    }
)
_NOT_EXTRA = READ | KNOWN_UNREAD | CHAT_FIELDS
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_FORMATS = ("text", "json_object", "json_schema")


def _object(value: Any, where: str) -> JSON:
    if not isinstance(value, dict):
        raise invalid_field(where, "must be a JSON object")
    return value


def _part(part: Any, where: str) -> JSON:
    part = _object(part, where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": string_at(part.get("text"), f"{where}.text")}
    if kind == "refusal":
        return {"type": "text", "text": string_at(part.get("refusal"), f"{where}.refusal")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise invalid_field(f"{where}.image_url", "must be a URL (file_id is not served)")
        image: JSON = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        return _file(part, where)
    raise invalid_field(f"{where}.type", f"a {echoed(repr(kind))} part is not served")


def _file(part: JSON, where: str) -> JSON:
    """An `input_file` part as a chat `file` part: its content inline (`file_data`, a
    data URL); a `file_id` or `file_url` would need a files API or a fetch, not served."""
    for field in ("file_id", "file_url"):
        if part.get(field) is not None:
            raise invalid_field(f"{where}.{field}", "is not served: send the file as file_data")
    file: JSON = {"file_data": string_at(part.get("file_data"), f"{where}.file_data")}
    if part.get("filename") is not None:
        file["filename"] = string_at(part["filename"], f"{where}.filename")
    return {"type": "file", "file": file}


def _message(item: JSON, where: str) -> JSON:
    role = item.get("role")
    if role not in _ROLES:
        raise invalid_field(f"{where}.role", 'must be "user", "assistant", "system" or "developer"')
    out: JSON = {"role": _ROLES[role]}
    content = item.get("content")
    if isinstance(content, str):
        out["content"] = content
    elif isinstance(content, list):
        parts = [_part(part, f"{where}.content[{i}]") for i, part in enumerate(content)]
        if all(part["type"] == "text" for part in parts):
            out["content"] = "".join(part["text"] for part in parts)
        else:
            out["parts"] = parts
    else:
        raise invalid_field(f"{where}.content", "must be a string or a list of parts")
    return out


# how what this door leaves out of an item is named in `x-tandem-ignored-fields`
UNOPENED_REASONING = "input[].encrypted_content"
OUTPUT_ENCRYPTED = "input[].output[].encrypted_content"


def _output(value: Any, where: str, left_out: list[str]) -> JSON:
    """A `function_call_output`'s output as a tool message's content: a string, text
    parts joined, else the parts (an image a tool saw: Codex's `view_image`). An
    `encrypted_content` part (another gateway's) is left out, named."""
    if isinstance(value, str):
        return {"content": value}
    if not isinstance(value, list):
        raise invalid_field(where, "must be a string or a list of parts")
    parts = []
    for i, part in enumerate(value):
        if isinstance(part, dict) and part.get("type") == "encrypted_content":
            left_out.append(OUTPUT_ENCRYPTED)
            continue
        parts.append(_part(part, f"{where}[{i}]"))
    if all(part["type"] == "text" for part in parts):
        return {"content": "".join(part["text"] for part in parts)}
    return {"parts": parts}


def _reasoning(
    item: JSON, where: str, sealer: Sealer | None, left_out: list[str]
) -> tuple[str, str | None]:
    """A reasoning item's (text, signature): its `encrypted_content` opened (Codex sends
    no `reasoning_text` back), else its `reasoning_text` content, unsigned. A token that
    does not open (another model's, another key's, a changed one) is left out, named:
    Codex resends its whole history every turn, so a refusal would end the session for
    good; its signature is never taken, only the item's own text, if it has any."""
    sealed = item.get("encrypted_content")
    if sealed:
        sealed = string_at(sealed, f"{where}.encrypted_content")
        try:
            if sealer is not None:
                return sealer.open(sealed)
        except SealBroken:
            pass
        left_out.append(UNOPENED_REASONING)
    content = item.get("content") or []
    if not isinstance(content, list):
        raise invalid_field(f"{where}.content", "must be a list")
    text = "".join(
        string_at(part.get("text"), f"{where}.content[{i}].text")
        for i, part in enumerate(content)
        if isinstance(part, dict) and part.get("type") == "reasoning_text"
    )
    return text, None


def _namespaced(item: JSON, where: str) -> str:
    """A call item's function name: its `name`, under its `namespace` if it has one."""
    name = string_at(item.get("name"), f"{where}.name")
    namespace = item.get("namespace")
    return wire_name(name, string_at(namespace, f"{where}.namespace") if namespace else None)


def _call(item: JSON, where: str, kind: str) -> JSON:
    """A `function_call` or `custom_tool_call` item as a chat tool call."""
    if kind == "custom_tool_call":
        arguments = custom_arguments(string_at(item.get("input"), f"{where}.input"))
    else:
        arguments = string_at(item.get("arguments", ""), f"{where}.arguments")
    return {
        "id": string_at(item.get("call_id"), f"{where}.call_id"),
        "type": "function",
        "function": {"name": _namespaced(item, where), "arguments": arguments},
    }


class _Reasoning:
    """Reasoning items read, held for the assistant message that follows them."""

    __slots__ = ("signature", "text")

    def __init__(self) -> None:
        self.text = ""
        self.signature: str | None = None

    def add(self, text: str, signature: str | None) -> None:
        self.text += text
        if signature:  # one per thinking block; the last one is kept, as in a stream
            self.signature = signature

    def give(self, message: JSON) -> None:
        """Put what is held on `message` (an assistant's), then hold nothing."""
        if self.text or self.signature:
            message["reasoning_content"] = self.text
            if self.signature:
                message["reasoning_signature"] = self.signature
        self.drop()

    def drop(self) -> None:
        self.text, self.signature = "", None

    def __bool__(self) -> bool:
        return bool(self.text or self.signature)


def _messages(value: Any, sealer: Sealer | None, left_out: list[str]) -> list[JSON]:
    """`input` as proto-form messages; what of its items is left out, named in
    `left_out`."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise invalid_field("input", "must be a string or a non-empty list of items")
    out: list[JSON] = []
    reasoning = _Reasoning()
    for i, item in enumerate(value):
        where = f"input[{i}]"
        item = _object(item, where)
        kind = item.get("type", "message")
        if kind == "message":
            message = _message(item, where)
            if message["role"] == "assistant":
                reasoning.give(message)
            else:  # a turn that ended before its answer: its reasoning belongs to no message
                reasoning.drop()
            out.append(message)
        elif kind in ("function_call", "custom_tool_call"):
            call = _call(item, where, kind)
            last = out[-1] if out else None
            if last is None or last["role"] != "assistant" or reasoning:
                last = {"role": "assistant"}
                reasoning.give(last)
                out.append(last)
            last.setdefault("tool_calls", []).append(call)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = string_at(item.get("call_id"), f"{where}.call_id")
            output = _output(item.get("output"), f"{where}.output", left_out)
            out.append({"role": "tool", "tool_call_id": call_id, **output})
        elif kind == "reasoning":
            reasoning.add(*_reasoning(item, where, sealer, left_out))
        elif kind == "item_reference":
            raise invalid_field(f"{where}.id", "no stored item has this id")
        else:
            raise invalid_field(f"{where}.type", f"a {echoed(repr(kind))} item is not served")
    return out


# the tools carried to a chat upstream (tools.py); the others are hosted, left out
CARRIED_TOOLS = frozenset({"function", "custom", "namespace"})
_CHOSEN_TOOLS = frozenset({"function", "custom"})  # a tool_choice that names one of them


def _tool_choice(choice: Any) -> JSON | None:
    """The chat's tool choice; a hosted tool's is None (left out)."""
    if choice in ("auto", "none", "required"):
        return {"mode": choice}
    if isinstance(choice, dict):
        if choice.get("type") in _CHOSEN_TOOLS:
            name = _namespaced(choice, "tool_choice")
            return {"type": "function", "function": {"name": name}}
        if isinstance(choice.get("type"), str):
            return None
    raise invalid_field("tool_choice", 'must be "auto", "none", "required" or a tool')


def _format(text: Any) -> JSON | None:
    text = _object(text, "text")
    if text.get("format") is None:
        return None
    form = _object(text["format"], "text.format")
    kind = form.get("type")
    if kind not in _FORMATS:
        raise invalid_field("text.format.type", 'must be "text", "json_object" or "json_schema"')
    if kind != "json_schema":
        return {"type": kind}
    schema: JSON = {"name": string_at(form.get("name"), "text.format.name")}
    for key in ("description", "schema", "strict"):
        if form.get(key) is not None:
            schema[key] = form[key]
    return {"type": "json_schema", "json_schema": schema}


def _refuse(body: JSON) -> None:
    """What this door cannot serve, each a 400 naming it."""
    if body.get("background"):
        raise invalid_field("background", "background responses are not served")
    for field in ("conversation", "prompt"):
        if body.get(field) is not None:
            raise invalid_field(field, "is not served")


def parse_chat(
    body: Any, *, sealer: Sealer | None = None, left_out: list[str] | None = None
) -> chat_pb2.ChatCompletionRequest:
    """The request as a chat; `sealer` opens its reasoning items' `encrypted_content`
    (without one, none opens). What of its items is left out (a token that does not
    open, an `encrypted_content` tool output part) is named in `left_out`, once each,
    for `x-tandem-ignored-fields` (`unread` names the rest)."""
    body = _object(body, "body")
    _refuse(body)
    request = chat_pb2.ChatCompletionRequest()
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_field("model", "is required")
    request.model = model
    named: list[str] = []
    messages = _messages(body.get("input"), sealer, named)
    if left_out is not None:
        left_out.extend(name for name in dict.fromkeys(named) if name not in left_out)
    if body.get("instructions") is not None:
        messages.insert(
            0, {"role": "system", "content": string_at(body["instructions"], "instructions")}
        )
    parse_field_as(request, "messages", messages, "input")
    if body.get("tools"):
        parse_field_as(request, "tools", read_tools(body["tools"])[0], "tools")
    if body.get("tool_choice") is not None and (choice := _tool_choice(body["tool_choice"])):
        parse_field_as(request, "tool_choice", choice, "tool_choice")
    for field, name in (
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("max_completion_tokens", "max_output_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("user", "user"),
    ):
        if body.get(name) is not None:
            parse_field_as(request, field, body[name], name)
    if body.get("user") is None and body.get("safety_identifier") is not None:
        parse_field_as(request, "user", body["safety_identifier"], "safety_identifier")
    reasoning = body.get("reasoning")
    if reasoning is not None and _object(reasoning, "reasoning").get("effort") is not None:
        parse_field_as(request, "reasoning_effort", reasoning["effort"], "reasoning.effort")
    if body.get("text") is not None and (form := _format(body["text"])):
        parse_field_as(request, "response_format", form, "text.format")
    if body.get("metadata") is not None:
        _object(body["metadata"], "metadata")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid_field("stream", "must be a boolean")
    request.stream = stream
    if not _NOT_EXTRA.issuperset(body) and (extra := fields_beyond(body, _NOT_EXTRA)):
        request.extra_body_json = orjson.dumps(extra).decode()  # /v1's rule, in order
    return request


def unread(body: Any) -> list[str]:
    """What of a Responses request (parsed already) the proto cannot carry, each named
    once: Responses fields it has no place for, a proto field this door does not read,
    hosted tools (`tools[].web_search`), `reasoning.summary`, `text.verbosity`; `include`
    unless it asks only for `reasoning.encrypted_content`, which is always there."""
    names: dict[str, None] = {}
    for key, value in body.items():
        if value is not None and key not in READ and (key in KNOWN_UNREAD or key in CHAT_FIELDS):
            names[key] = None
    if _honoured_include(body.get("include")):
        names.pop("include", None)
    for tool in body.get("tools") or ():
        members = tool.get("tools") if tool.get("type") == "namespace" else (tool,)
        for member in members:  # a namespace's own hosted tools are left out too
            if member.get("type") not in CARRIED_TOOLS:
                names[f"tools[].{member.get('type')}"] = None
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") not in _CHOSEN_TOOLS:
        names["tool_choice"] = None
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("summary") is not None:
        names["reasoning.summary"] = None
    text = body.get("text")
    if isinstance(text, dict) and text.get("verbosity") is not None:
        names["text.verbosity"] = None
    return list(names)


def _honoured_include(include: Any) -> bool:
    """An `include` this door honours whole: only `reasoning.encrypted_content` (a
    reasoning item is always sealed)."""
    return isinstance(include, list) and all(v == "reasoning.encrypted_content" for v in include)


def settings(body: Any, store: bool = False) -> JSON:
    """The request's settings as the response object echoes them (parsed already), with
    whether it is stored (`store` resolved against its default)."""
    text = body.get("text") or {}
    form = text.get("format") or {"type": "text"}
    reasoning = body.get("reasoning") or {}
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": store,
        "temperature": body.get("temperature"),
        "text": {**text, "format": form},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "user": body.get("user"),
        "safety_identifier": body.get("safety_identifier"),
    }


def tool_names(body: Any) -> ToolNames:
    """The request's tools by the names a chat upstream calls them (parsed already)."""
    return ToolNames.of(body.get("tools"))


_chat: ChatParser = parse_chat
