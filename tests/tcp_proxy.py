"""A TCP proxy on 127.0.0.1:0 that a test can cut and restore: a database going away."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

from tests.served import Served, run_on_thread

__all__ = ["TcpProxy", "proxy_to"]


@contextlib.contextmanager
def proxy_to(url: str, default_port: int) -> Iterator[TcpProxy]:
    """A running proxy in front of the server at `url` (PostgreSQL's, Redis'), stopped after."""
    target = urlsplit(url)
    with TcpProxy(target.hostname or "127.0.0.1", target.port or default_port) as proxy:
        yield proxy


class TcpProxy(Served):
    """Forwards every connection to `target`; while cut, it drops every open
    connection and closes new ones at once (the database is unreachable)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    def start(self) -> int:
        self._thread = run_on_thread(self._run)
        return self.port

    def cut(self) -> None:
        def drop_all() -> None:
            self._cut = True
            for writer in list(self._writers):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(drop_all)

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "_cut", False)

    def stop(self) -> None:
        async def shut() -> None:
            self._cut = True
            for writer in list(self._writers):
                writer.transport.abort()
            # their connection_lost callbacks run, so no transport is left half-closed
            # (a ResourceWarning, once collected, in whichever test runs then)
            await asyncio.sleep(0.05)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shut(), self._loop)
        self._thread.join(10)

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
