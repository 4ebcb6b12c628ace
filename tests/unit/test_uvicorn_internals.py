"""What http_bridge/transport.py and server/lifecycle.py take from uvicorn beyond its public
`Config`: each piece, in process, with the shape they rely on.

uvicorn is pinned exactly (pyproject.toml); an upgrade that moves any of these fails
here, naming the piece, rather than in production. Each message says where it is used.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import socket
import tomllib
from pathlib import Path

import pytest
import uvicorn
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from http_bridge.transport import GuardedHttpToolsProtocol, guarded_protocol
from server.config import ServerConfig
from server.drain import DrainClock
from server.lifecycle import HttpServer

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 10.0  # far past what an in-process request takes; never a timing assertion


def test_uvicorn_is_pinned_to_the_version_checked_here() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if re.match(r"uvicorn\b", d)]
    assert len(pins) == 1, pins
    assert pins[0].startswith("uvicorn=="), (
        f"pin uvicorn exactly (==): transport.py drives its internals; got {pins}"
    )
    assert uvicorn.__version__ == pins[0].removeprefix("uvicorn=="), (
        "the installed uvicorn is not the pinned one: reinstall (make install)"
    )


def test_the_protocol_constructor_takes_what_the_subclass_passes() -> None:
    parameters = list(inspect.signature(HttpToolsProtocol.__init__).parameters)
    assert parameters == ["self", "config", "server_state", "app_state", "_loop"], (
        "GuardedHttpToolsProtocol.__init__ passes (config, server_state, app_state, _loop)"
    )


@pytest.mark.parametrize(
    "method",
    [
        "connection_made",  # asyncio's, extended: the connection bound, keep-alive armed
        "connection_lost",
        "data_received",  # the header byte budget
        "pause_writing",  # the write watch
        "resume_writing",
        "on_headers_complete",  # httptools' callback: the body's deadline starts
        "on_message_complete",  # httptools' callback: the next head's budget
        "on_response_complete",  # uvicorn's own: an answer's end waiting to be written
        "timeout_keep_alive_handler",  # armed before the first byte too
    ],
)
def test_the_protocol_has_each_method_the_subclass_extends(method: str) -> None:
    assert callable(getattr(HttpToolsProtocol, method, None)), (
        f"HttpToolsProtocol.{method} is gone: GuardedHttpToolsProtocol overrides or calls it"
    )


def test_the_server_has_what_the_lifecycle_overrides() -> None:
    serve = inspect.getsource(uvicorn.Server.serve)
    assert "self.capture_signals()" in serve, (
        "Server.serve no longer wraps itself in capture_signals(): HttpServer overrides it "
        "so that the lifecycle owns the signals (uvicorn#1600 renamed this hook once)"
    )
    shutdown = list(inspect.signature(uvicorn.Server.shutdown).parameters)
    assert shutdown == ["self", "sockets"], "HttpServer.shutdown(sockets) extends it"
    assert "self.shutdown(sockets=" in inspect.getsource(uvicorn.Server._serve)
    assert "default_headers" in inspect.getsource(uvicorn.Server.on_tick), (
        "the transport's own answers take the date header from server_state.default_headers"
    )
    server = HttpServer(uvicorn.Config(_app), 1.0, DrainClock())
    assert isinstance(server.server_state, ServerState)
    assert isinstance(server.server_state.connections, set), "cut_by_drain walks it"
    assert server.started is False  # start_http_server waits for it
    assert server.should_exit is False  # the lifecycle's stop sets it


def test_the_config_takes_the_protocol_class_and_a_float_keep_alive() -> None:
    protocol = guarded_protocol(ServerConfig())
    config = uvicorn.Config(_app, http=protocol, timeout_keep_alive=0.5)  # type: ignore[arg-type]
    config.load()
    assert config.http_protocol_class is protocol
    assert config.timeout_keep_alive == 0.5


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def test_a_connection_holds_what_the_subclass_reads() -> None:
    """A live connection over a socket pair: its attributes, then a request's cycle."""
    seen: dict[str, object] = {}
    arrived, read, answer, answered = (asyncio.Event() for _ in range(4))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        cycle = protocol.cycle
        seen.update(url=protocol.url, cycle=cycle, started=cycle.response_started)
        arrived.set()
        seen["body"] = (await receive())["body"]
        read.set()
        await answer.wait()
        message: Message = {"type": "http.response.start", "status": 204, "headers": []}
        await send(message)
        await send({"type": "http.response.body", "body": b""})
        answered.set()

    limits = ServerConfig(keep_alive_timeout_s=30.0)
    config = uvicorn.Config(
        app,
        http=guarded_protocol(limits),
        lifespan="off",
        timeout_keep_alive=limits.keep_alive_timeout_s,  # type: ignore[arg-type]
    )
    config.load()
    state = ServerState()
    state.default_headers = [(b"date", b"now")]
    protocol_class = config.http_protocol_class
    assert issubclass(protocol_class, GuardedHttpToolsProtocol)
    protocol = protocol_class(config, state, {})
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    try:
        await loop.connect_accepted_socket(lambda: protocol, ours)
        assert protocol.loop is loop
        assert isinstance(protocol.transport, asyncio.Transport)
        assert isinstance(protocol.flow, FlowControl)
        assert protocol.flow.read_paused is False
        assert protocol.flow.write_paused is False
        assert protocol in protocol.connections
        assert protocol.connections is state.connections
        assert protocol.server_state.default_headers == [(b"date", b"now")]
        assert protocol.timeout_keep_alive == 30.0
        idle = protocol.timeout_keep_alive_task  # armed by the subclass, before the first byte
        assert isinstance(idle, asyncio.TimerHandle)
        assert protocol.app is not None
        assert protocol.cycle is None  # no request yet

        theirs.setblocking(False)
        await loop.sock_sendall(
            theirs, b"POST /probe?x=1 HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n"
        )
        async with asyncio.timeout(WAIT_S):
            await arrived.wait()
        cycle = seen["cycle"]
        assert idle.cancelled(), "uvicorn no longer cancels timeout_keep_alive_task on data"
        assert seen["url"] == b"/probe?x=1", "_report reads the request line's path from url"
        assert isinstance(cycle, RequestResponseCycle)
        assert seen["started"] is False
        assert cycle.response_complete is False
        assert cycle.disconnected is False
        assert isinstance(cycle.message_event, asyncio.Event)
        assert cycle.scope["path"] == "/probe"
        # the parser's callbacks reach the subclass: the head ended, then the message
        assert protocol._in_head is False, "on_headers_complete was not called"
        assert protocol._header_bytes > 0
        await loop.sock_sendall(theirs, b"ok")
        async with asyncio.timeout(WAIT_S):
            await read.wait()
        assert seen["body"] == b"ok"
        assert protocol._in_head is True, "on_message_complete was not called"
        assert protocol._header_bytes == 0
        answer.set()
        async with asyncio.timeout(WAIT_S):
            await answered.wait()
        assert cycle.response_started is True
        assert cycle.response_complete is True
        between = protocol.timeout_keep_alive_task  # uvicorn's own, between requests
        assert isinstance(between, asyncio.TimerHandle)
        assert between is not idle
    finally:
        protocol.transport.close()
        theirs.close()
        await asyncio.sleep(0)
