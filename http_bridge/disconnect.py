"""Cancelling a handler's work when its client goes away.

uvicorn does not cancel the app when a client disconnects, and its `send`
quietly does nothing afterwards, so an answer would be generated to nobody.
A small watcher task waits for `http.disconnect` and cancels the handler's
task; the handler sees `ClientDisconnected` and returns without answering.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.types import Receive

__all__ = ["ClientDisconnected", "cancel_on_disconnect"]


class ClientDisconnected(Exception):
    """The client went away; there is nobody to answer."""


@contextlib.asynccontextmanager
async def cancel_on_disconnect(receive: Receive) -> AsyncIterator[None]:
    """Run the body; if the client disconnects meanwhile, cancel it and raise
    `ClientDisconnected`. Call only once the request body has been read."""
    task = asyncio.current_task()
    assert task is not None
    disconnected = finished = False

    async def watch() -> None:
        nonlocal disconnected
        with contextlib.suppress(Exception):
            while (await receive())["type"] != "http.disconnect":
                pass
            if not finished:  # one loop, so the body cannot finish between check and cancel
                disconnected = True
                task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        yield
    except asyncio.CancelledError:
        if not disconnected:
            raise
        task.uncancel()
        raise ClientDisconnected from None
    finally:
        finished = True
        watcher.cancel()
