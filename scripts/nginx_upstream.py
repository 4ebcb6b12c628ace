"""An instant OpenAI-compatible upstream for scripts/bench.py: nginx (Debian's package)
answering canned bytes, so the upstream costs the gateway's core nothing.

`POST /v1/chat/completions` answers a fixed completion; `POST
/sse/v1/chat/completions` a fixed stream of `WORDS` chunks, a finish chunk, a
usage chunk and `[DONE]` (nginx cannot read a body to choose, so the path
does). One worker, keep-alive without limit, no logs. Prints `http listening
on HOST:PORT` (and a `grpc` line, as the bench reads two) and runs until
SIGTERM.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

WORDS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
HEAD = {"id": "up", "created": 1, "model": "up-model"}
USAGE = {"prompt_tokens": WORDS, "completion_tokens": WORDS, "total_tokens": 2 * WORDS}
TEXT = "".join(f"word{i} " for i in range(WORDS))


def completion() -> bytes:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": TEXT},
        "finish_reason": "stop",
    }
    return orjson.dumps({**HEAD, "object": "chat.completion", "choices": [choice], "usage": USAGE})


def _event(choices: list[object], **extra: object) -> bytes:
    data = {**HEAD, "object": "chat.completion.chunk", "choices": choices, **extra}
    return b"data: " + orjson.dumps(data) + b"\n\n"


def stream() -> bytes:
    return (
        b"".join(
            _event([{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}])
            for i in range(WORDS)
        )
        + _event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        + _event([], usage=USAGE)
        + b"data: [DONE]\n\n"
    )


CONFIG = """
worker_processes 1;
daemon off;
pid %(dir)s/nginx.pid;
error_log stderr error;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path %(dir)s/body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;
    server {
        listen 127.0.0.1:%(port)d;
        location = /v1/chat/completions {
            default_type application/json;
            return 200 '%(completion)s';
        }
        location = /sse/v1/chat/completions {
            default_type text/event-stream;
            return 200 '%(stream)s';
        }
    }
}
"""


def _die_with_parent() -> None:
    """nginx gets SIGTERM when this process dies, however it dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main() -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    directory = Path(tempfile.mkdtemp(prefix="tandem-nginx-"))
    with socket.socket() as sock:  # a free port (nginx takes it a moment later)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for body in (completion(), stream()):
        assert not {b"'", b"$"} & {bytes([c]) for c in body}  # nothing nginx reads as syntax
    (directory / "nginx.conf").write_text(
        CONFIG
        % {
            "dir": directory,
            "port": port,
            "completion": completion().decode(),
            "stream": stream().decode(),
        }
    )
    proc = subprocess.Popen(
        [nginx, "-e", "stderr", "-p", str(directory), "-c", str(directory / "nginx.conf")],
        preexec_fn=_die_with_parent,
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.terminate())
    deadline_checks = 200
    while deadline_checks:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
            break
        except OSError:
            deadline_checks -= 1
            if proc.poll() is not None:
                sys.exit("nginx did not start")
            os.sched_yield()
    sys.stdout.write(f"http listening on 127.0.0.1:{port}\ngrpc listening on -\n")
    sys.stdout.flush()
    try:
        proc.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
