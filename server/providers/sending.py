"""Whether an upstream request got as far as a connection: only then can it have been read.

A timeout does not say where it struck: aiohttp's whole-answer timer fires as
the same `TimeoutError` while the connect is still under way (nothing sent:
free) as while the answer is awaited (the upstream may have read the prompt:
charged once). The connector marks the request its task is making once it
has a connection, on which aiohttp then writes it.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

__all__ = ["MarkingConnector", "Sending"]


class Sending:
    """One upstream request: `connected` once it had a connection to be written to."""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False

    @classmethod
    def begin(cls) -> Sending:
        """The request this task makes next. Never reset: a task's requests follow
        one another, and each begins its own."""
        sending = cls()
        _sending.set(sending)
        return sending


_sending: ContextVar[Sending | None] = ContextVar("tandem_upstream_sending", default=None)


class MarkingConnector(aiohttp.TCPConnector):
    """A pooled TCP connector that marks its task's request once it has a connection."""

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        sending = _sending.get()
        if sending is not None:
            sending.connected = True
        return connection
