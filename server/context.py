"""What the core knows about a call besides its request: who, how, until when."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ANONYMOUS",
    "CallContext",
    "CallTrace",
    "Caller",
    "CallerKind",
    "KeyNarrowing",
    "Protocol",
    "new_id",
    "request_id_from",
]

# the door a call came in by: gRPC, or an HTTP door by its name (http_bridge/doors.py,
# which owns the names; this Literal types them, and tests/unit/test_doors.py ties the two)
Protocol = Literal["grpc", "native", "openai", "ollama", "anthropic", "responses", "admin"]
# `user`: a JWT subject or an API key's user; `admin`: an admin key; `anonymous`: no credential.
# The kind, not the name, says who a caller is: a JWT may well say `sub: admin`.
CallerKind = Literal["user", "admin", "anonymous"]

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True, slots=True)
class KeyNarrowing:
    """What an API key narrows of its tier (None: the tier's own), applied together with
    the tier's, the tighter winning. Made once per key record fetched, not per request."""

    models: frozenset[str] | None = None  # within the tier's
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    budget_nanos: int | None = None
    budget_period: str | None = None  # daily | weekly | monthly | total, with budget_nanos


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated (or anonymous) caller and the tier it is billed to; an API
    key's caller carries what the key narrows (`key`: None when it narrows nothing)."""

    user: str
    tier: str
    kind: CallerKind = "user"
    key_id: str | None = None
    key: KeyNarrowing | None = None

    @property
    def admin(self) -> bool:
        return self.kind == "admin"


ANONYMOUS = Caller(user="anonymous", tier="free", kind="anonymous")


class CallTrace:
    """What the call fills in as it goes, for the door to send and telemetry to report:
    the core says which model and provider served it and what it cost, the policy
    what the limits said, the provider what it left out, the door how it ended.

    Each field has one writer, a method below named for what happened; everyone
    else reads the fields. Times are on the `time.monotonic()` clock.
    """

    __slots__ = (
        "budget_exceeded",
        "completion_tokens",
        "cost_nanos",
        "door_ignored",
        "error_status",
        "failed_attempts",
        "first_chunk_at",
        "ignored_fields",
        "model",
        "prompt_estimate",
        "prompt_tokens",
        "provider",
        "provider_kind",
        "rate_limited",
        "response_headers",
        "traceparent",
        "tracestate",
        "upstream_model",
        "upstream_s",
    )

    def __init__(self) -> None:
        self.model = ""  # the public name, once it resolved ("" for a name nobody serves)
        self.prompt_estimate = 0  # the core's, for a door that says it before the counts
        self.provider = ""  # the provider that served (the last one tried)
        self.provider_kind = ""
        self.failed_attempts: list[str] | None = None  # the provider of each failed attempt
        self.upstream_model = ""  # the model the upstream said it used
        self.first_chunk_at: float | None = None  # streams only
        self.upstream_s: float | None = None  # the provider's time (streams: to the first chunk)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_nanos = 0  # what the ledger records it cost (0: unpriced, or not counted)
        self.rate_limited = False
        self.budget_exceeded = False
        # what the core leaves for the door to send: headers (gRPC: trailers)
        self.response_headers: list[tuple[str, str]] = []
        self.error_status: int | None = None  # a stream's in-band error, after its 200
        # what the upstream that served left out of the request, as the doors name it
        # (`x-tandem-ignored-fields`); each attempt says it anew (server/translate/extra.py),
        # after what the door itself could not carry into the request
        self.ignored_fields: str | None = None
        self.door_ignored: str | None = None
        # the W3C headers the upstream request carries on, while tracing is on
        self.traceparent: str | None = None
        self.tracestate: str | None = None

    # the core (server/core/dataplane.py, server/core/accounting.py)

    def resolved(self, model: str, prompt_estimate: int = 0) -> None:
        """The call names a model the caller may use; a chat's prompt is estimated."""
        self.model = model
        self.prompt_estimate = prompt_estimate

    def attempting(self, provider: str, kind: str) -> None:
        """An upstream attempt begins: it starts from what the door left out."""
        self.provider = provider
        self.provider_kind = kind
        self.ignored_fields = self.door_ignored

    def attempt_failed(self, provider: str) -> None:
        if self.failed_attempts is None:
            self.failed_attempts = []
        self.failed_attempts.append(provider)

    def answered(
        self, model: str, at: float | None = None, upstream_s: float | None = None
    ) -> None:
        """The upstream answered, naming its `model` (a stream: its first chunk came `at`,
        `upstream_s` after the first attempt began)."""
        self.upstream_model = model
        if at is not None:
            self.first_chunk_at = at
        if upstream_s is not None:
            self.upstream_s = upstream_s

    def counted(self, prompt_tokens: int, completion_tokens: int, upstream_s: float | None) -> None:
        """The call ended, charged these tokens; `upstream_s` unless a first chunk said it."""
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        if self.upstream_s is None:
            self.upstream_s = upstream_s

    def priced(self, cost_nanos: int) -> None:
        """What the charged tokens cost, as the ledger records it (nano-dollars)."""
        self.cost_nanos = cost_nanos

    # the policy (server/policy/__init__.py)

    def limited(self) -> None:
        """A rate limit refused the call."""
        self.rate_limited = True

    def over_budget(self) -> None:
        """A budget refused the call (a rate limit of money: counted as both)."""
        self.rate_limited = self.budget_exceeded = True

    def add_headers(self, headers: list[tuple[str, str]]) -> None:
        """The limits' x-ratelimit-* and the budgets' x-budget-* headers, for the door
        to send."""
        self.response_headers += headers

    # the tracer (server/telemetry/tracing.py)

    def traced_as(self, traceparent: str, tracestate: str | None) -> None:
        """The call's span, as the upstream request carries it on."""
        self.traceparent = traceparent
        self.tracestate = tracestate

    # what was left out of the request (server/translate/extra.py)

    def door_left_out(self, named: str | None) -> None:
        """What the door could not carry into the request, for every attempt."""
        self.door_ignored = self.ignored_fields = named

    def upstream_left_out(self, named: str | None) -> None:
        """What this attempt's upstream leaves out, after what the door did."""
        door = self.door_ignored
        if door is None:
            self.ignored_fields = named
        elif named:
            self.ignored_fields = f"{door},{named}"

    # the door (http_bridge/streaming.py)

    def failed(self, status: int) -> None:
        """A stream ended in an error after its 200 (499: the client went away)."""
        self.error_status = status


@dataclass(frozen=True, slots=True)
class CallContext:
    """Gateway-only facts about one call, fixed at admission; the request itself
    stays a proto. What the call fills in as it goes is its `trace`.

    `deadline` is on the `time.monotonic()` clock. `traceparent` and
    `tracestate` are the caller's W3C trace context, if it sent one.
    `anthropic_beta` is the caller's `anthropic-beta` header (gRPC: metadata),
    sent on unchanged to `anthropic`-kind upstreams alone, so that Anthropic's
    beta features (prompt caching's among them) work through the gateway; the
    core checks it (server/core/validation.py).
    """

    request_id: str
    protocol: Protocol
    caller: Caller = ANONYMOUS
    deadline: float | None = None
    started: float = field(default_factory=time.monotonic)
    traceparent: str | None = None
    tracestate: str | None = None
    anthropic_beta: str | None = None
    trace: CallTrace = field(default_factory=CallTrace)  # filled in by the call

    @property
    def response_headers(self) -> list[tuple[str, str]]:
        """Where the core leaves headers (or gRPC trailers) for the door to send."""
        return self.trace.response_headers

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


def request_id_from(incoming: str | None) -> str:
    """Echo a valid incoming request id, else make a new one."""
    if incoming and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return new_id()


# ids must not be guessable: a stored response's (`resp_…`) is all that keeps one
# anonymous caller's answers from another's, and request ids are shown to every caller.
# Each is a counter under keyed BLAKE2b (a PRF: what any number of ids say of the next
# is nothing without the key), the key 32 bytes from the OS, drawn again in a forked
# child. Not `os.urandom` per id: as cheap (~0.36 us here, against ~0.38 us), but a
# system call that releases the GIL, measured to cost ~5% of a proxied request while
# the ledger's thread held it; nor `random`, whose state 156 ids give away.
_ID_BYTES = 16
_counter = itertools.count()
_keyed = hashlib.blake2b(key=os.urandom(32), digest_size=_ID_BYTES)


def _rekey() -> None:
    global _keyed
    _keyed = hashlib.blake2b(key=os.urandom(32), digest_size=_ID_BYTES)


os.register_at_fork(after_in_child=_rekey)


def new_id() -> str:
    """128 unpredictable bits as 32 hex digits."""
    keyed = _keyed.copy()
    keyed.update(next(_counter).to_bytes(8, "little"))
    return keyed.hexdigest()
