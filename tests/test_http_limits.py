"""The HTTP transport's bounds on a live `tandem serve`, over raw sockets:
header size and time, body time, keep-alive, and the number of connections."""

from __future__ import annotations

import re
import select
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import orjson
import pytest

from tests.eventually import eventually
from tests.servers import TandemProcess, start_tandem

LIMITS_CONFIG = """
server: {header_timeout_s: 1, body_timeout_s: 1, keep_alive_timeout_s: 2}
usage: {store: none}
"""
MAX_HEADER_BYTES = 65536  # the default
WAIT_S = 15.0  # far past every timeout configured here; never a timing assertion
CHAT = b'{"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}'

Response = tuple[int, dict[str, str], bytes]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TandemProcess]:
    process = start_tandem(tmp_path_factory.mktemp("limits"), LIMITS_CONFIG)
    yield process
    assert process.terminate() == 0, process.stderr()


def _connect(server: TandemProcess, *, sndbuf: int | None = None) -> socket.socket:
    host, port = server.http.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if sndbuf is not None:  # keep what the kernel buffers for us small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.settimeout(WAIT_S)
    sock.connect((host, int(port)))
    return sock


def _chat_head(size: int, *, body: bytes = CHAT, request_id: str = "caller-1") -> bytes:
    """A chat request head (request line and headers, blank line included) of exactly `size` bytes."""
    start = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
        b"x-request-id: " + request_id.encode() + b"\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nx-pad: "
    )
    padding = size - len(start) - len(b"\r\n\r\n")
    assert padding > 0
    return start + b"p" * padding + b"\r\n\r\n"


def _read_response(sock: socket.socket | BinaryIO) -> Response:
    """One answer with a content-length body; pass `sock.makefile("rb")` to read several."""
    reader = sock.makefile("rb") if isinstance(sock, socket.socket) else sock
    status_line = reader.readline()
    assert status_line, "closed before an answer"
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed: EOF (or a reset) with nothing more to read."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def _error(body: bytes) -> dict[str, object]:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert isinstance(error, dict)
    return error


def _read_closing_error(
    sock: socket.socket, status: int, error: Mapping[str, object], request_id: str
) -> dict[str, str]:
    """Read one answer and check it is this error, for the caller's `request_id`, sent
    with `connection: close` and followed by the close; its headers."""
    answered, headers, body = _read_response(sock)
    assert answered == status
    assert _error(body) == error
    assert headers["x-request-id"] == request_id
    assert headers["connection"] == "close"
    assert _closed_by_server(sock)
    return headers


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match, status
    return int(match.group(1)) * 1024


def test_head_over_the_limit_gets_431_and_is_not_read(server: TandemProcess) -> None:
    with _connect(server) as warm:  # the first request's one-off allocations
        warm.sendall(_chat_head(1000) + CHAT)
        assert _read_response(warm)[0] == 200
    rss_before = _rss_bytes(server.proc.pid)

    total = 16 * 1024 * 1024
    sent = 0
    with _connect(server, sndbuf=64 * 1024) as sock:
        head = _chat_head(1000, request_id="mine-1").removesuffix(b"\r\n\r\n") + b"\r\nx-big: "
        sock.sendall(head)
        chunk = b"a" * 65536
        try:
            while sent < total:
                sent += sock.send(chunk)
        except (ConnectionResetError, BrokenPipeError):
            pass
        status, headers, body = _read_response(sock)
        closed = _closed_by_server(sock)

    assert sent < total, "the server read a 16 MB header to its end"
    assert status == 431
    assert _error(body) == {
        "message": f"request line and headers are larger than the limit of {MAX_HEADER_BYTES} bytes",
        "type": "invalid_request_error",
        "code": "headers_too_large",
        "param": None,
    }
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])  # new: ours was never read
    assert headers["connection"] == "close"
    assert closed
    assert _rss_bytes(server.proc.pid) - rss_before < 8 * 1024 * 1024


def test_head_of_exactly_the_limit_is_served_and_one_byte_more_is_not(
    server: TandemProcess,
) -> None:
    with _connect(server) as sock:  # head and body in one write, split as the kernel likes
        sock.sendall(_chat_head(MAX_HEADER_BYTES) + CHAT)
        status, headers, body = _read_response(sock)
    assert status == 200, body
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "hello there"
    assert headers["x-request-id"] == "caller-1"

    with _connect(server) as sock:
        sock.sendall(_chat_head(MAX_HEADER_BYTES + 1) + CHAT)
        status, headers, body = _read_response(sock)
        assert status == 431
        assert _error(body)["code"] == "headers_too_large"
        assert _closed_by_server(sock)


def test_each_request_on_a_kept_alive_connection_has_its_own_header_budget(
    server: TandemProcess,
) -> None:
    near_limit = MAX_HEADER_BYTES - 1000
    with _connect(server) as sock:
        for i in range(3):  # together far over the limit, each under it
            sock.sendall(_chat_head(near_limit, request_id=f"keep-{i}") + CHAT)
            status, headers, _ = _read_response(sock)
            assert (status, headers["x-request-id"]) == (200, f"keep-{i}")
            assert headers.get("connection") != "close"
        sock.sendall(_chat_head(MAX_HEADER_BYTES + 1000) + CHAT)
        assert _read_response(sock)[0] == 431


def test_pipelined_requests_near_the_limit_are_each_answered_in_order(
    server: TandemProcess,
) -> None:
    """Reads that cross the limit but hold several heads, each under it."""
    with _connect(server) as sock:
        sock.sendall(b"".join(_chat_head(50000, request_id=f"pipe-{i}") + CHAT for i in range(3)))
        reader = sock.makefile("rb")
        ids = [_read_response(reader)[1]["x-request-id"] for _ in range(3)]
    assert ids == ["pipe-0", "pipe-1", "pipe-2"]


def test_slow_head_is_closed_without_an_answer(server: TandemProcess) -> None:
    """One header line every 0.2 s against `header_timeout_s: 1`."""
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        for line in range(int(WAIT_S / 0.2)):
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                break
            sock.sendall(b"x-line-%d: slow\r\n" % line)
        else:
            pytest.fail("the server kept a slow head open")
        assert _closed_by_server(sock)  # no answer, just closed


def test_slow_body_is_cut_with_408(server: TandemProcess) -> None:
    """One body byte every 0.2 s against `body_timeout_s: 1`: the total counts, not the gaps."""
    body = b" " * 500
    with _connect(server) as sock:
        sock.sendall(_chat_head(500, body=body, request_id="trickle-1"))
        for i in range(len(body)):
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                break
            sock.sendall(body[i : i + 1])
        else:
            pytest.fail("the server waited for a trickling body to its end")
        cut = {
            "message": "request body not received within 1 s",
            "type": "invalid_request_error",
            "code": "body_timeout",
            "param": None,
        }
        _read_closing_error(sock, 408, cut, "trickle-1")
    with _connect(server) as sock:  # the server is fine after it
        sock.sendall(_chat_head(500) + CHAT)
        assert _read_response(sock)[0] == 200


def test_idle_connections_are_closed_after_the_keep_alive_timeout(server: TandemProcess) -> None:
    """`keep_alive_timeout_s: 2`: before the first byte, and after an answer."""
    with _connect(server) as fresh, _connect(server) as used:
        used.sendall(_chat_head(500) + CHAT)
        assert _read_response(used)[0] == 200
        assert _closed_by_server(fresh)
        assert _closed_by_server(used)


def test_connections_over_the_bound_get_503_until_one_closes(
    tandem: Callable[..., TandemProcess],
) -> None:
    server = tandem("server: {max_connections: 2}\nusage: {store: none}\n")
    held = [_connect(server), _connect(server)]
    try:
        for sock in held:  # accepted and served: they count
            sock.sendall(_chat_head(500) + CHAT)
            assert _read_response(sock)[0] == 200

        with _connect(server) as extra:
            extra.sendall(_chat_head(500, request_id="extra-1") + CHAT)
            refused = {
                "message": "the server has 2 connections open; retry shortly",
                "type": "unavailable_error",
                "code": "too_many_connections",
                "param": None,
            }
            headers = _read_closing_error(extra, 503, refused, "extra-1")
            assert headers["retry-after"] == "1"
        assert [line["status"] for line in _access_lines(server, "extra-1")] == [503]

        held.pop().close()

        def served() -> bool:  # the server sees the close a moment later
            with _connect(server) as again:
                again.sendall(_chat_head(500) + CHAT)
                return _read_response(again)[0] == 200

        eventually(served, WAIT_S, what="a slot given back")
    finally:
        for sock in held:
            sock.close()


def _counted(server: TandemProcess, status: int) -> float:
    """tandem_requests_total over every series with this status."""
    with _connect(server) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: t\r\n\r\n")
        text = _read_response(sock)[2].decode()
    series = re.findall(r"^tandem_requests_total\{([^}]*)\} (\S+)$", text, re.MULTILINE)
    return sum(float(value) for labels, value in series if f'status="{status}"' in labels)


def _access_lines(server: TandemProcess, request_id: str) -> list[dict[str, object]]:
    lines = (orjson.loads(line) for line in server.settled_stderr().splitlines() if line[:1] == "{")
    return [line for line in lines if line.get("request_id") == request_id and "status" in line]


def test_the_transports_own_answers_are_counted_and_logged(server: TandemProcess) -> None:
    """A 431 or a 408 is written by the transport, not the app: it still reaches the
    metrics and the access log, as an operator would look for it."""
    before = {status: _counted(server, status) for status in (431, 408)}
    with _connect(server) as sock:
        head = _chat_head(1000).removesuffix(b"\r\n\r\n") + b"\r\nx-big: "
        sock.sendall(head + b"a" * (MAX_HEADER_BYTES + 10))
        status, headers, _ = _read_response(sock)
        assert status == 431
        too_large = headers["x-request-id"]
    with _connect(server) as sock:  # a head, then never the body
        sock.sendall(_chat_head(500, request_id="never-sent-1"))
        assert _read_response(sock)[0] == 408
    assert _counted(server, 431) == before[431] + 1
    assert _counted(server, 408) == before[408] + 1
    [line_431] = _access_lines(server, too_large)
    assert (line_431["status"], line_431["protocol"], line_431["route"]) == (
        431,
        "openai",
        "/v1/chat/completions",
    )
    [line_408] = _access_lines(server, "never-sent-1")
    assert (line_408["status"], line_408["protocol"]) == (408, "openai")
