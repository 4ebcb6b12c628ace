"""When a failed call is asked again, and after how long.

Retried, at most `max_retries` times:
- UNAVAILABLE, unless it is an `upstream_error` (the gateway already retried its
  provider and tried its fallbacks): the gateway unreachable, restarting or draining,
  or a store it needs down. After a jittered exponential backoff (0.5 s, 1 s, 2 s, ...
  up to 8 s, each less up to a quarter at random), as the `openai` library waits.
- RESOURCE_EXHAUSTED that carries a RetryInfo: a rate limit that will have room by
  then. Never `budget_exceeded` (a budget resets with its period, not in seconds), never
  a call the gateway marks `x-should-retry: false` (it could never fit its limits), never
  one asked to wait over a minute. After the RetryInfo's delay, plus up to a tenth more
  at random, so that refused callers do not all come back at once.
A retry that would wait past the call's deadline is not made: the error is raised.
A stream is never asked again once it has received anything (ChatStream's job).
"""

from __future__ import annotations

import random
import time

import grpc

from tandem.client._errors import RateLimitError, TandemError

__all__ = ["Deadline", "retry_delay"]

INITIAL_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
MAX_RETRY_AFTER_S = 60.0


def retry_delay(
    error: TandemError, retries: int, max_retries: int, deadline: Deadline
) -> float | None:
    """How long to wait before asking again after the `retries`-th retry failed with
    `error` (None: raise it)."""
    if retries >= max_retries or error.trailers.get("x-should-retry") == "false":
        return None  # the gateway says asking again cannot help, whatever the status
    if error.code == grpc.StatusCode.UNAVAILABLE and error.type != "upstream_error":
        delay = min(INITIAL_BACKOFF_S * 2**retries, MAX_BACKOFF_S) * (1 - 0.25 * random.random())
    elif (
        isinstance(error, RateLimitError)
        and error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        and error.retry_after is not None
        and error.retry_after <= MAX_RETRY_AFTER_S
        and error.error_code != "budget_exceeded"
        and error.should_retry
    ):
        delay = error.retry_after * (1 + 0.1 * random.random())
    else:
        return None
    remaining = deadline.remaining()
    return delay if remaining is None or delay < remaining else None


class Deadline:
    """A call's deadline over all its attempts: `timeout` seconds from its start."""

    __slots__ = ("at",)

    def __init__(self, timeout: float | None) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left (at least 0), None without a deadline."""
        return None if self.at is None else max(self.at - time.monotonic(), 0.0)

    @property
    def passed(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at
