"""What the suite's own servers share (the fake upstreams, the OTLP receiver, the TCP
proxy, a Redis of a test's own): `with` one, it is started, and stopped on leaving."""

from __future__ import annotations

import asyncio
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Self, TypeVar

from aiohttp import web

__all__ = ["AppServer", "ScriptFollower", "Served", "run_on_thread"]

R = TypeVar("R")  # what a `ScriptFollower` records of a request


class Served(ABC):
    """A server a test starts and stops; `with Server() as server:` does both."""

    @abstractmethod
    def start(self) -> object: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_on_thread(run: Callable[[threading.Event], None]) -> threading.Thread:
    """`run(ready)` on a daemon thread, returned once it has set `ready` (10 s at most):
    an event loop serving beside the test."""
    ready = threading.Event()
    thread = threading.Thread(target=run, args=(ready,), daemon=True)
    thread.start()
    assert ready.wait(10)
    return thread


class AppServer(Served):
    """An aiohttp app (`app()`: a fake upstream's routes) served on 127.0.0.1:0 by an
    event loop on its own thread, at `root` once started."""

    # whether a handler is cancelled when its client goes away
    handler_cancellation: ClassVar[bool] = False
    root = ""

    @property
    def base_url(self) -> str:
        """`root` + `/v1`: the base URL an OpenAI client is given."""
        return f"{self.root}/v1"

    @abstractmethod
    def app(self) -> web.Application: ...

    def start(self) -> str:
        self._thread = run_on_thread(self._run)
        return self.root

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(
            self.app(), handler_cancellation=self.handler_cancellation, access_log=None
        )
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", 0).start())
        self.root = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        ready.set()
        self._loop.run_forever()
        self._loop.close()

    def stop(self) -> None:
        async def shutdown() -> None:
            await self._runner.cleanup()
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(10)


@dataclass
class ScriptFollower(AppServer, Generic[R]):
    """A fake upstream that meets each request with the next behaviour of its `script`
    (`ok` once it is empty), records every request in `requests`, and notes the time
    in `gone` when a client goes away from a call it answers `_noting_hangup`."""

    script: deque[str] = field(default_factory=deque)
    requests: list[R] = field(default_factory=list)
    gone: list[float] = field(default_factory=list)
    handler_cancellation: ClassVar[bool] = True

    def reset(self, *script: str) -> None:
        self.script = deque(script)
        self.requests.clear()
        self.gone.clear()

    async def hung_up(self) -> bool:
        """Whether a client has gone away from a call (a check for `eventually_async`)."""
        return bool(self.gone)

    def _next(self) -> str:
        return self.script.popleft() if self.script else "ok"

    async def _noting_hangup(self, answer: Awaitable[web.StreamResponse]) -> web.StreamResponse:
        """`answer`, awaited; a client that goes away meanwhile (the handler cancelled,
        or its connection reset) is noted in `gone`."""
        try:
            return await answer
        except (asyncio.CancelledError, ConnectionResetError):
            self.gone.append(time.monotonic())
            raise
