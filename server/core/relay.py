"""Relaying a Responses-API upstream (`responses: native`): its answer as it is.

A `/v1/responses` call for a model whose provider speaks the Responses API goes
to it as the caller wrote it (the model renamed: providers/openai.py), and its
answer comes back unchanged but for `model`, which names the public model as on
every door: a stream's events keep their names, order, `sequence_number`s and
bytes (only the events that carry the whole response, `response.created` ... to
`response.completed`, are written again, for that name); a whole answer is its
JSON. What it cost is the upstream's `usage` (`response.completed`,
`response.incomplete`, `response.failed`, or the whole answer's), else the
estimate of what was sent (the deltas' text).

A stream that fails after its first event ends with `response.failed`, naming
the response the upstream opened, unless the upstream sent it itself (then the
call is still recorded as the upstream's failure). The upstream's own error
events (`error`, `response.failed`) are relayed with their messages scrubbed as
any upstream error's (providers/failures.py), and an event whose name is not a
name (`[a-z0-9._]`, so that it cannot break the SSE framing) is the upstream's
failure. What the upstream keeps (`store`, `previous_response_id`) is its own
business; a `background` response would be answered and counted nowhere, and
`conversation` and `prompt` name state the gateway does not relay: each a 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from server.core.estimate import texts_of
from server.errors import GatewayError, InvalidRequestError, UpstreamError
from server.providers.failures import scrub_error

__all__ = ["Event", "Relay", "Scrub", "check_relayed", "max_output_tokens"]

# one relayed item: (its event name, its data); a whole answer's name is b""
Event = tuple[bytes, bytes]

# the events that end a stream, and the one of them that says it failed
_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed"})
_FAILED = "response.failed"
# the events whose `response` is the whole response, so name the upstream's model
_WHOLE = frozenset({"response.created", "response.in_progress", "response.queued", *_ENDS})
_ITEM_DONE = "response.output_item.done"
_ERROR = "error"
# an event's name, written as the SSE `event:` line: nothing that could end that line
_EVENT_NAME = re.compile(r"[a-z0-9._]{1,128}")
# what scrubs an upstream's error object, in place: the provider's own (its URL and key)
Scrub = Callable[[dict[str, Any]], None]


def _scrub_any(error: dict[str, Any]) -> None:
    scrub_error(error, ())


# fields whose state lives with the upstream in ways the gateway does not relay
_REFUSED = {
    "conversation": "a conversation is not relayed; send previous_response_id or the input",
    "prompt": "a stored prompt is not relayed; send the input itself",
}


def check_relayed(body: dict[str, Any]) -> None:
    """What the gateway itself needs of a relayed request: the rest is the upstream's."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError("stream: must be a boolean", param="stream")
    if body.get("background") is True:
        raise InvalidRequestError(
            "background: a background response is not relayed (it would be answered and "
            "counted nowhere); send it without",
            param="background",
        )
    for name, why in _REFUSED.items():
        if body.get(name) is not None:
            raise InvalidRequestError(f"{name}: {why}", param=name)


def max_output_tokens(body: dict[str, Any]) -> int:
    """The caller's `max_output_tokens`, reserved at admission beside the prompt."""
    value = body.get("max_output_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Relay:
    """One relayed answer, read an event (or a whole answer) at a time: what it says it
    used, and enough of it to end it with `response.failed` if it breaks.

    `start` starts over (each attempt's answer is its own); `ended` is the event that
    ended the stream (or `response.completed` for a whole answer); `sent` the texts
    sent since the core last took them, for an estimate when no usage comes."""

    __slots__ = (
        "_items",
        "_model",
        "_scrub",
        "_sequence",
        "_snapshot",
        "cached_tokens",
        "ended",
        "input_tokens",
        "output_tokens",
        "reasoning_tokens",
        "sent",
        "streaming",
        "upstream_model",
        "usage_known",
    )

    def __init__(self, model: str, *, streaming: bool) -> None:
        self._model = model  # the public name, that the answer says
        self.streaming = streaming  # events (`event`), or a whole answer (`whole`)
        self.sent: list[str] = []
        self.start()

    def start(self, scrub: Scrub = _scrub_any) -> None:
        """A new attempt's answer begins; `scrub` cleans its error objects."""
        self._scrub = scrub
        self._items: list[Any] = []  # the output items done, for `response.failed`
        self._sequence = -1
        self._snapshot: dict[str, Any] | None = None  # the response as last described
        self.ended = ""
        self.upstream_model = ""
        self.usage_known = False
        self.input_tokens = self.output_tokens = 0
        self.cached_tokens = self.reasoning_tokens = 0
        self.sent.clear()

    def event(self, raw: bytes) -> Event:
        """A streamed event's data in, the event out (its data as it came, but for the
        model in a whole response)."""
        data = _object(raw)
        kind = data.get("type")
        if not isinstance(kind, str) or not kind:
            raise UpstreamError("upstream provider sent an event without a type")
        if not _EVENT_NAME.fullmatch(kind):
            raise UpstreamError("upstream provider sent an event with an invalid type")
        sequence = data.get("sequence_number")
        if isinstance(sequence, int):
            self._sequence = sequence
        if kind.endswith(".delta"):
            delta = data.get("delta")
            if isinstance(delta, str):
                self.sent.append(delta)
        elif kind == _ITEM_DONE:
            self._items.append(data.get("item"))
        elif kind in _WHOLE and isinstance(response := data.get("response"), dict):
            self._snapshot = response
            self._rename(response)
            if kind in _ENDS:
                self.ended = kind
                self._usage(response.get("usage"))
                if isinstance(error := response.get("error"), dict):
                    self._scrub(error)
            raw = orjson.dumps(data)
        elif kind == _ERROR:
            self._scrub(data)
            if isinstance(error := data.get("error"), dict):
                self._scrub(error)
            raw = orjson.dumps(data)
        return kind.encode(), raw

    def whole(self, raw: bytes) -> Event:
        """A whole answer's JSON in, the answer out."""
        data = _object(raw)
        self._rename(data)
        if isinstance(error := data.get("error"), dict):
            self._scrub(error)
        self.ended = "response.completed"
        self._usage(data.get("usage"))
        if not self.usage_known:
            texts_of(data.get("output"), self.sent)
        return b"", orjson.dumps(data)

    def failed(self, error: GatewayError) -> Event:
        """The `response.failed` that ends a stream broken after its first event."""
        response = dict(self._snapshot or {"id": None, "object": "response"})
        response.update(
            status="failed",
            model=self._model,
            output=self._items,
            error={"code": error.code or "server_error", "message": error.message},
        )
        self._sequence += 1
        data = {"type": _FAILED, "sequence_number": self._sequence, "response": response}
        return _FAILED.encode(), orjson.dumps(data)

    @property
    def failed_upstream(self) -> bool:
        """The upstream itself ended the stream with `response.failed`."""
        return self.ended == _FAILED

    def _rename(self, response: dict[str, Any]) -> None:
        model = response.get("model")
        if isinstance(model, str):
            if not self.upstream_model:
                self.upstream_model = model
            response["model"] = self._model

    def _usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        prompt, completion = _count(usage, "input_tokens"), _count(usage, "output_tokens")
        if prompt is None or completion is None:
            return
        self.usage_known = True
        self.input_tokens, self.output_tokens = prompt, completion
        self.cached_tokens = _count(usage.get("input_tokens_details"), "cached_tokens") or 0
        self.reasoning_tokens = _count(usage.get("output_tokens_details"), "reasoning_tokens") or 0


def _object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise UpstreamError("upstream provider sent an invalid response")
    return data


def _count(where: Any, key: str) -> int | None:
    value = where.get(key) if isinstance(where, dict) else None
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53
    return value if ok else None
