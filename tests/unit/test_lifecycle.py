"""server/lifecycle.py's HTTP server in process: what its drain does with connections."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest
import uvloop
from starlette.types import Receive, Scope, Send

from server.config import ServerConfig
from server.lifecycle import start_http_server
from tests.servers import read_until_closed


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"served"})


async def _drain_with_a_connection_in_the_listen_queue() -> bytes:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server, serving = await start_http_server(_app, listener, ServerConfig(shutdown_grace_s=5))
    # The kernel completes the handshake; the loop, not run since, has not accepted it.
    client = socket.create_connection(listener.getsockname())
    try:
        client.sendall(b"GET / HTTP/1.1\r\nhost: tandem\r\n\r\n")
        reading = asyncio.ensure_future(asyncio.to_thread(read_until_closed, client))
        await server.shutdown()  # its first step runs now, before the loop could accept
        answer = await reading
    finally:
        client.close()
        server.should_exit = True
        await serving
    return answer


@pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_the_drain_serves_a_connection_still_in_the_listen_queue(
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Closing a listener resets the connections in its queue, each with a balancer's
    request sent (its 502); the drain takes them first and serves them."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        answer = runner.run(_drain_with_a_connection_in_the_listen_queue())
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b"served\r\n0\r\n\r\n")  # whole, and then closed
