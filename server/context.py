"""What the core knows about a call besides its request: who, how, until when."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "ANONYMOUS",
    "CallContext",
    "Caller",
    "CallerKind",
    "Protocol",
    "new_id",
    "request_id_from",
]

Protocol = Literal["grpc", "native", "openai", "ollama"]
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


@dataclass(frozen=True, slots=True)
class CallContext:
    """Gateway-only facts about one call; the request itself stays a proto.

    `deadline` is on the `time.monotonic()` clock. `response_headers` is
    where the core leaves headers (or gRPC trailers) for the door to send.
    """

    request_id: str
    protocol: Protocol
    caller: Caller = ANONYMOUS
    deadline: float | None = None
    started: float = field(default_factory=time.monotonic)
    response_headers: list[tuple[str, str]] = field(default_factory=list)

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


def request_id_from(incoming: str | None) -> str:
    """Echo a valid incoming request id, else make a new one."""
    if incoming and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return new_id()


def new_id() -> str:
    """128 random bits as 32 hex digits (cheaper than uuid4().hex)."""
    return os.urandom(16).hex()
