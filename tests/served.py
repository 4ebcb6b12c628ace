"""What the suite's own servers share (the fake upstreams, the OTLP receiver, the TCP
proxy, a Redis of a test's own): `with` one, it is started, and stopped on leaving."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Self

__all__ = ["Served", "run_on_thread"]


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
