"""Whether this replica should get traffic, and which shared dependencies answer.

Not ready only while starting or draining. A shared dependency that stops
answering (the usage store, Redis) leaves the replica ready but `degraded`:
every replica shares it, so taking them all out of the balancer would stop
the gateway exactly when it can still serve (usage waits in memory, limits
turn local). The checks run in the background, at most once a second each,
never on a request's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from server.telemetry.metrics import Metrics

__all__ = ["DependencyMonitor", "Readiness"]

logger = logging.getLogger("tandem.health")

CHECK_INTERVAL_S = 1.0
CHECK_TIMEOUT_S = 1.0

Check = Callable[[], Awaitable[Any]]


class DependencyMonitor:
    """Pings each dependency every `CHECK_INTERVAL_S`; `down` is those that did not answer."""

    def __init__(self, checks: dict[str, Check], metrics: Metrics) -> None:
        self._checks = checks
        self._gauges = {name: metrics.dependency_up.labels(name) for name in checks}
        self.down: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._checks:
            self._task = asyncio.create_task(self._run(), name="dependency-checks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def check_once(self) -> None:
        names = list(self._checks)
        results = await asyncio.gather(*(self._answers(self._checks[n]) for n in names))
        for name, up in zip(names, results, strict=True):
            self._gauges[name].set(1 if up else 0)
            if up and name in self.down:
                self.down.discard(name)
                logger.warning("%s answers again", name)
            elif not up and name not in self.down:
                self.down.add(name)
                logger.warning("%s does not answer: serving degraded", name)

    async def _answers(self, check: Check) -> bool:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await check()
        except Exception:  # any failure of any client library: it does not answer
            return False
        return True

    async def _run(self) -> None:
        """A check `CHECK_INTERVAL_S` after the last one ended (the first, at start, is
        the lifecycle's): at most one a second, however slow a dependency answers."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            await self.check_once()


class Readiness:
    """`/readyz` and gRPC health read this; the lifecycle moves it along."""

    def __init__(self, metrics: Metrics) -> None:
        self.state: Literal["starting", "ready", "draining"] = "starting"
        self.monitor: DependencyMonitor | None = None
        self._metrics = metrics

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def set_ready(self) -> None:
        self.state = "ready"

    def set_draining(self) -> None:
        self.state = "draining"
        self._metrics.draining.set(1)

    def answer(self) -> tuple[int, dict[str, Any]]:
        """The status and body of `/readyz`."""
        if not self.ready:
            return 503, {"status": "not ready", "failing": [self.state]}
        degraded = sorted(self.monitor.down) if self.monitor is not None else []
        return 200, {"status": "ready", "degraded": degraded}
