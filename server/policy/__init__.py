"""The one policy every door applies: who the caller is, and whether it may go now.

Two entry points, each called from exactly one place:
- `authenticate` by the doors (the gRPC method wrapper and the HTTP
  dependency), before the core sees the call;
- `admit` by the core, once the model is known, returning an `Admission`
  the core settles when the call ends.

Today the policy admits everyone as the anonymous `free` caller, without
limits; JWT, API keys and rate limits plug in here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from server.config import Config
from server.core.context import ANONYMOUS, CallContext, Caller
from server.core.errors import AuthenticationError
from server.providers.base import Route

__all__ = ["Admission", "Policy"]


@dataclass(frozen=True, slots=True)
class Admission:
    """A granted call's reservation, settled to what it really used."""

    headers: tuple[tuple[str, str], ...] = ()

    def settle(self, used_tokens: int) -> None:
        return None


_UNLIMITED = Admission()


class Policy:
    def __init__(self, config: Config) -> None:
        self._required = config.auth.required

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller behind an `authorization` header or metadata value."""
        if not self._required:
            return ANONYMOUS
        if not authorization:
            raise AuthenticationError("missing credentials: send authorization: Bearer <token>")
        raise AuthenticationError("invalid credentials")

    async def admit(
        self, ctx: CallContext, route: Route, estimate_tokens: Callable[[], int]
    ) -> Admission:
        """Reserve the call's estimated tokens, or raise RateLimitError.

        `estimate_tokens` is called only when a token budget applies.
        """
        return _UNLIMITED
