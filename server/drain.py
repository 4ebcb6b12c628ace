"""When the shutdown grace ends, shared by both doors.

A call still running past it is cut by the drain, not abandoned by its
caller: it is reported as 503 / `UNAVAILABLE`, as the contract pins, not as
the client's own cancellation.
"""

from __future__ import annotations

import math
import time

__all__ = ["DrainClock"]


class DrainClock:
    __slots__ = ("_ends_at",)

    def __init__(self) -> None:
        self._ends_at = math.inf  # not draining

    def start(self, grace_s: float) -> None:
        """The drain begins now, if it has not already: the first start sets its end."""
        if self._ends_at == math.inf:
            self._ends_at = time.monotonic() + grace_s

    def remaining_s(self) -> float:
        return max(self._ends_at - time.monotonic(), 0.0)

    @property
    def over(self) -> bool:
        """The grace has ended: whatever still runs is being cut."""
        return time.monotonic() >= self._ends_at
