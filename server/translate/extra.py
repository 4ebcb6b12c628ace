"""A request's fields beyond the proto's (`extra_body`), and naming what an upstream
leaves out.

`/v1` keeps every top-level field the proto does not carry as
`extra_body_json`, in the caller's order; `/v1/messages` keeps Anthropic's
own it does not translate (`context_management`, `output_config`, ...) the
same way; gRPC and native callers may set `extra_body` or `extra_body_json`
themselves (the text wins: it keeps order and integers). Where they go is
decided by the kind and by the door the call came in through
(`CallContext.protocol`), since the fields are that door's dialect: an
`openai`-kind upstream gets them merged into its body unless they came
through the Anthropic door, an `anthropic`-kind one only if they did; both as
far as the provider's `extra_fields` lets them, and never over what the
gateway set. Every other case leaves them all out.

Whatever an attempt's upstream leaves out is recorded on the call's trace,
after what the door itself could not carry into the request (a tool's
`defer_loading` on `/v1/messages`, named once per call by `name_unread`), and
the door names it in `x-tandem-ignored-fields` (HTTP header, gRPC initial
metadata). A request without extra fields pays two `HasField` calls.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Literal
from urllib.parse import quote

import orjson
from google.protobuf import struct_pb2
from tandem.v1 import chat_pb2

from server.context import CallTrace
from server.errors import InvalidRequestError, echoed
from server.translate.common import struct_to_json
from server.translate.protocols import JSON
from server.translate.protojson import json_object

__all__ = [
    "CHAT_FIELDS",
    "REASONING_SENT_BACK",
    "TOOL_PARTS_HELD_BACK",
    "ExtraFields",
    "check_extra_body",
    "check_extra_body_json",
    "extra_body",
    "extra_fields_of",
    "fields_beyond",
    "leave_out",
    "leave_out_extra_body",
    "merge_extra",
    "name_unread",
    "refuse_uncounted_work",
]

# a provider's `extra_fields`: all pass, none do, or those named
ExtraFields = Literal["allow", "deny"] | Collection[str]

# the proto's own fields: the gateway decides them (and sets the rest of an upstream's
# body from them), so `extra_body` may name none
CHAT_FIELDS = frozenset(chat_pb2.ChatCompletionRequest.DESCRIPTOR.fields_by_name)

# how `x-tandem-ignored-fields` names the reasoning of messages sent back, where an
# upstream cannot take it
REASONING_SENT_BACK = "messages[].reasoning_content"
# and a tool message's parts other than text (an image a tool saw), where an upstream
# takes text only in a tool message (OpenAI's chat API)
TOOL_PARTS_HELD_BACK = "messages[tool].content[]"

# the value of `x-tandem-ignored-fields` is at most this long; names past it are counted
MAX_NAMED_BYTES = 1024


def _invalid(param: str, message: str) -> InvalidRequestError:
    param = echoed(param)  # a key is the caller's
    return InvalidRequestError(f"{param}: {message}", param=param)


def _struct(struct: struct_pb2.Struct) -> JSON:
    try:
        return struct_to_json(struct)
    except InvalidRequestError:  # only protobuf can carry a NaN
        raise _invalid("extra_body", "holds a number JSON cannot (NaN or Infinity)") from None


def extra_body(request: chat_pb2.ChatCompletionRequest) -> JSON:
    """The request's extra fields, in order (`{}` for none); the JSON text wins. The
    text was checked: by a JSON door's parser, else by the core."""
    if request.HasField("extra_body_json"):
        extra: JSON = orjson.loads(request.extra_body_json)
        return extra
    if request.HasField("extra_body"):
        return _struct(request.extra_body)
    return {}


# upstream work no answer's usage would count: vLLM's `best_of` generates that many
# sequences and reports the tokens of those returned only
UNCOUNTED_WORK = frozenset({"best_of"})


def _check_names(extra: JSON) -> None:
    for key in extra:
        if key in CHAT_FIELDS:
            raise _invalid(
                f"extra_body.{key}",
                "is a field of the request, decided by the gateway: set it as such",
            )
    refuse_uncounted_work(extra, prefix="extra_body.")


def fields_beyond(body: JSON, read: frozenset[str]) -> JSON:
    """A door's top-level fields it does not `read`, in the caller's order, to keep as
    `extra_body_json` (JSON null means "not set"); one asking for uncounted upstream
    work is refused by the name the caller wrote."""
    extra = {key: value for key, value in body.items() if key not in read and value is not None}
    refuse_uncounted_work(extra, prefix="")
    return extra


def refuse_uncounted_work(extra: JSON, *, prefix: str) -> None:
    """A 400 naming (as the caller wrote it) an extra field that asks for upstream work
    the answer's usage would not count."""
    for key in UNCOUNTED_WORK.intersection(extra):
        raise _invalid(
            f"{prefix}{key}", "asks for upstream work the answer's usage would not count"
        )


def check_extra_body_json(text: str) -> None:
    """A JSON object's text, nested at most as deep as any JSON a door takes, naming no
    field of the request."""
    _check_names(json_object(text, "extra_body_json"))


def check_extra_body(struct: struct_pb2.Struct) -> None:
    _check_names(_struct(struct))


def extra_fields_of(allowed: ExtraFields) -> ExtraFields:
    """A provider's `extra_fields` as `_passing` reads it fastest: a list as a set."""
    return allowed if isinstance(allowed, str) else frozenset(allowed)


def _passing(extra: JSON, allowed: ExtraFields) -> tuple[JSON, list[str]]:
    """(what a provider's `extra_fields` lets through, the names it holds back)."""
    if allowed == "allow":
        return extra, []
    if allowed == "deny":
        return {}, list(extra)
    passed = {key: value for key, value in extra.items() if key in allowed}
    return passed, [key for key in extra if key not in passed]


def _named(names: Iterable[str], room: int) -> str:
    """`names` comma-separated, each percent-encoded where it is not a plain name, in at
    most `room` bytes, the rest counted as `+N more`."""
    named: list[str] = []
    size = 0
    left = 0
    for name in names:
        text = quote(echoed(name), safe="[]")
        if left or size + len(text) + 1 > room - 16:  # room for "+N more"
            left += 1
            continue
        named.append(text)
        size += len(text) + 1
    if left:
        named.append(f"+{left} more")
    return ",".join(named)


def name_unread(trace: CallTrace, names: Iterable[str]) -> None:
    """Name what the door could not carry into the request, for every attempt (the
    core starts each with it), in at most half the header's room."""
    trace.door_left_out(_named(names, MAX_NAMED_BYTES // 2) or None)


def leave_out(trace: CallTrace, names: Iterable[str]) -> None:
    """Name what this attempt's upstream leaves out of the request (for the door's
    `x-tandem-ignored-fields`), after what the door did: at most `MAX_NAMED_BYTES` in
    all."""
    door = trace.door_ignored
    room = MAX_NAMED_BYTES if door is None else MAX_NAMED_BYTES - len(door) - 1
    trace.upstream_left_out(_named(names, room) or None)


def merge_extra(
    body: JSON,
    request: chat_pb2.ChatCompletionRequest,
    allowed: ExtraFields,
    left_out: list[str] | None,
) -> None:
    """The request's extra fields into an upstream's `body`, in order, as far as
    `allowed` lets them and never over what the gateway set; the names held back are
    added to `left_out`."""
    if request.HasField("extra_body_json") or request.HasField("extra_body"):
        passed, held_back = _passing(extra_body(request), allowed)
        for key, value in passed.items():
            body.setdefault(key, value)
        if left_out is not None:
            left_out += held_back


def leave_out_extra_body(request: chat_pb2.ChatCompletionRequest, trace: CallTrace) -> None:
    """An upstream that takes no extra field: every one left out, and named."""
    if request.HasField("extra_body_json") or request.HasField("extra_body"):
        leave_out(trace, extra_body(request))
