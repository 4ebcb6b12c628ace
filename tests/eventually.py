"""Wait for a condition by polling it with a deadline, never by sleeping a guessed
time: on a slow machine a test gets slower, not red.

A check passes once it returns a truthy value without raising `AssertionError`;
its value is returned. Past the deadline the last failure is raised, so the
report says what was still wrong.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["eventually", "eventually_async"]

T = TypeVar("T")

TIMEOUT_S = 10.0
INTERVAL_S = 0.02


class _Deadline:
    def __init__(self, timeout_s: float, what: str) -> None:
        self.timeout_s = timeout_s
        self.what = what
        self.at = time.monotonic() + timeout_s

    def passed(self, value: T | None) -> T:
        """`value` if it is truthy; a failed attempt otherwise."""
        if not value:
            raise AssertionError(f"the check returned {value!r}")
        return value

    def missed(self, error: AssertionError) -> None:
        """Raise `error`, the last attempt's, once the time is up."""
        if time.monotonic() >= self.at:
            what = f" ({self.what})" if self.what else ""
            raise AssertionError(f"not true within {self.timeout_s} s{what}: {error}") from error


def eventually(
    check: Callable[[], T | None],
    timeout_s: float = TIMEOUT_S,
    interval_s: float = INTERVAL_S,
    *,
    what: str = "",
) -> T:
    """Call `check` every `interval_s` until it passes, for at most `timeout_s`; `what`
    names the awaited condition in the failure."""
    deadline = _Deadline(timeout_s, what)
    while True:
        try:
            return deadline.passed(check())
        except AssertionError as error:
            deadline.missed(error)
        time.sleep(interval_s)


async def eventually_async(
    check: Callable[[], Awaitable[T | None]],
    timeout_s: float = TIMEOUT_S,
    interval_s: float = INTERVAL_S,
    *,
    what: str = "",
) -> T:
    """`eventually` for a test on the event loop, with a coroutine function: it waits
    without blocking the loop."""
    deadline = _Deadline(timeout_s, what)
    while True:
        try:
            return deadline.passed(await check())
        except AssertionError as error:
            deadline.missed(error)
        await asyncio.sleep(interval_s)
