"""The requests the client sends, built from what a caller passes: OpenAI-style dicts
(messages, tools, `response_format`, ...) or the proto messages themselves.

A message dict is the OpenAI shape: `content` a string or a list of parts (`text`,
`image_url`, `input_audio`, `file`), which the proto keeps in `parts`. Options are the
request's fields by their proto (OpenAI) names; `stop` may be one string and
`tool_choice` a mode (`"auto"`, `"none"`, `"required"`), as OpenAI allows; None means
not given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message

from tandem.v1 import admin_pb2, chat_pb2, embeddings_pb2, usage_pb2

__all__ = [
    "NOT_GIVEN",
    "Messages",
    "NotGiven",
    "chat_request",
    "embedding_request",
    "key_for_create",
    "key_update",
    "spend_request",
    "usage_request",
]

Messages = Iterable[Mapping[str, Any] | chat_pb2.ChatMessage]
Usd = str | Decimal | int


class NotGiven:
    """The default of an `update_key` field that is left as it is (None clears one)."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven()


def _parsed(body: Mapping[str, Any], message: Message, what: str) -> None:
    try:
        json_format.ParseDict(dict(body), message)
    except json_format.ParseError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    body = {key: value for key, value in message.items() if value is not None}
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        body["parts"] = [{"type": "text", "text": p} if isinstance(p, str) else p for p in content]
        del body["content"]
    return body


def chat_request(
    messages: Messages, model: str, options: Mapping[str, Any]
) -> chat_pb2.ChatCompletionRequest:
    body = {key: value for key, value in options.items() if value is not None}
    if isinstance(body.get("stop"), str):
        body["stop"] = [body["stop"]]
    if isinstance(body.get("tool_choice"), str):
        body["tool_choice"] = {"mode": body["tool_choice"]}
    request = chat_pb2.ChatCompletionRequest(model=model)
    _parsed(body, request, "chat options")
    for index, message in enumerate(messages):
        if isinstance(message, chat_pb2.ChatMessage):
            request.messages.append(message)
        else:
            _parsed(_message(message), request.messages.add(), f"messages[{index}]")
    return request


def embedding_request(
    input: str | Sequence[str], model: str, options: Mapping[str, Any]
) -> embeddings_pb2.EmbeddingRequest:
    request = embeddings_pb2.EmbeddingRequest(model=model)
    request.input.extend([input] if isinstance(input, str) else input)
    _parsed({k: v for k, v in options.items() if v is not None}, request, "embedding options")
    return request


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    """A Timestamp of `when` (a naive datetime is taken as UTC)."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def usage_request(
    since: datetime | None, until: datetime | None, user: str, model: str, limit: int
) -> usage_pb2.GetUsageRequest:
    request = usage_pb2.GetUsageRequest(user=user, model=model, limit=limit)
    if since is not None:
        request.since.CopyFrom(_timestamp(since))
    if until is not None:
        request.until.CopyFrom(_timestamp(until))
    return request


def spend_request(
    user: str,
    key_id: str,
    model: str,
    since: datetime | None,
    until: datetime | None,
    group_by: str,
) -> admin_pb2.GetSpendRequest:
    request = admin_pb2.GetSpendRequest(user=user, key_id=key_id, model=model, group_by=group_by)
    if since is not None:
        request.since.CopyFrom(_timestamp(since))
    if until is not None:
        request.until.CopyFrom(_timestamp(until))
    return request


_LIMITS = ("requests_per_minute", "tokens_per_minute", "max_concurrent_requests")


def _set(key: admin_pb2.Key, name: str, value: Any, budget_period: str) -> None:
    """Set one of a key's updatable fields (None: leave it unset, which clears it)."""
    if value is None:
        return
    if name == "models":
        key.models.SetInParent()
        key.models.names.extend(value)
    elif name in _LIMITS:
        setattr(key, name, value)
    elif name == "budget":
        key.budget.usd = str(value)
        key.budget.period = budget_period
    elif name == "expires_at":
        key.expires_at.CopyFrom(_timestamp(value))
    elif name == "labels":
        key.labels.update(value)


def key_for_create(
    user: str, tier: str, fields: Mapping[str, Any], budget_period: str
) -> admin_pb2.Key:
    """The `Key` to create: `fields` maps an updatable field's name to its value."""
    key = admin_pb2.Key(user=user, tier=tier)
    for name, value in fields.items():
        _set(key, name, value, budget_period)
    return key


def key_update(
    key_id: str, fields: Mapping[str, Any], budget_period: str
) -> admin_pb2.UpdateKeyRequest:
    """An update of the fields given (NOT_GIVEN ones are left out; None clears one)."""
    key = admin_pb2.Key(id=key_id)
    paths = []
    for name, value in fields.items():
        if value is NOT_GIVEN:
            continue
        _set(key, name, value, budget_period)
        paths.append(name)
    if not paths:
        raise ValueError("update_key: give at least one field to change")
    return admin_pb2.UpdateKeyRequest(key=key, update_mask=FieldMask(paths=paths))
