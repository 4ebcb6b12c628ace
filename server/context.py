"""What the core knows about a call besides its request: who, how, until when."""

from __future__ import annotations

import os
import random
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
    "Protocol",
    "new_id",
    "request_id_from",
]

# the door a call came in by: gRPC, or an HTTP door by its name (http_bridge/doors.py),
# which is also the name its errors are spelled by (http_bridge/errors.py)
Protocol = Literal["grpc", "native", "openai", "ollama", "anthropic"]
# `user`: a JWT subject or an API key's user; `admin`: an admin key; `anonymous`: no credential.
# The kind, not the name, says who a caller is: a JWT may well say `sub: admin`.
CallerKind = Literal["user", "admin", "anonymous"]

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated (or anonymous) caller and the tier it is billed to."""

    user: str
    tier: str
    kind: CallerKind = "user"
    key_id: str | None = None

    @property
    def admin(self) -> bool:
        return self.kind == "admin"


ANONYMOUS = Caller(user="anonymous", tier="free", kind="anonymous")


class CallTrace:
    """What telemetry reports of one call, filled in as it goes: the core says which
    model and provider served it and what it cost, the provider what it left out, the
    door how it ended.

    Times are on the `time.monotonic()` clock. `traceparent` and `tracestate`
    are the W3C headers the upstream request carries on, while tracing is on.
    """

    __slots__ = (
        "completion_tokens",
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
        "traceparent",
        "tracestate",
        "upstream_model",
        "upstream_s",
    )

    def __init__(self) -> None:
        self.model = ""  # the public name, once it resolved ("" for a name nobody serves)
        self.provider = ""  # the provider that served (the last one tried)
        self.provider_kind = ""
        self.upstream_model = ""  # the model the upstream said it used
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.prompt_estimate = 0  # the core's, for a door that says it before the counts
        self.first_chunk_at: float | None = None  # streams only
        self.upstream_s: float | None = None  # the provider's time (streams: to the first chunk)
        self.failed_attempts: list[str] | None = None  # the provider of each failed attempt
        self.rate_limited = False
        self.error_status: int | None = None  # a stream's in-band error, after its 200
        # what the upstream that served left out of the request, as the doors name it
        # (`x-tandem-ignored-fields`); each attempt says it anew (server/translate/extra.py),
        # after what the door itself could not carry into the request
        self.ignored_fields: str | None = None
        self.door_ignored: str | None = None
        self.traceparent: str | None = None
        self.tracestate: str | None = None

    def attempt_failed(self, provider: str) -> None:
        if self.failed_attempts is None:
            self.failed_attempts = []
        self.failed_attempts.append(provider)


@dataclass(frozen=True, slots=True)
class CallContext:
    """Gateway-only facts about one call; the request itself stays a proto.

    `deadline` is on the `time.monotonic()` clock. `response_headers` is
    where the core leaves headers (or gRPC trailers) for the door to send.
    `traceparent` and `tracestate` are the caller's W3C trace context, if it
    sent one. `anthropic_beta` is the caller's `anthropic-beta` header (gRPC:
    metadata), sent on unchanged to `anthropic`-kind upstreams alone, so that
    Anthropic's beta features (prompt caching's among them) work through the
    gateway; the core checks it (server/core/validation.py).
    """

    request_id: str
    protocol: Protocol
    caller: Caller = ANONYMOUS
    deadline: float | None = None
    started: float = field(default_factory=time.monotonic)
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    trace: CallTrace = field(default_factory=CallTrace)
    traceparent: str | None = None
    tracestate: str | None = None
    anthropic_beta: str | None = None

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


def request_id_from(incoming: str | None) -> str:
    """Echo a valid incoming request id, else make a new one."""
    if incoming and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return new_id()


# ids are unique, not secret: a generator of their own, seeded from the OS (again in a
# forked child), which no caller of `random.seed` (a test, a library) can make repeat
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)
_random_bits = _ids.getrandbits


def new_id() -> str:
    """128 random bits as 32 hex digits.

    Not `os.urandom`: a system call that releases the GIL, measured here to
    cost ~5% of a proxied request while the ledger's thread held it.
    """
    return f"{_random_bits(128):032x}"
