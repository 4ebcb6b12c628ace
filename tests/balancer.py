"""A real nginx (Debian's package) in front of `tandem serve` replicas, for tests.

HTTP is proxied with kept-alive upstream connections and no buffering (SSE),
gRPC with `grpc_pass`. nginx's idle timeout for upstream connections is
shorter than the replicas' `shutdown_delay_s`, so no connection it keeps idle
lives on into a replica's drain (see docs/operations.md, "Running more than one").
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.eventually import eventually

__all__ = ["Balancer", "free_ports", "nginx_balancer", "nginx_binary", "serving_nginx"]

CONFIG = """
worker_processes 1;
daemon off;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 4096; }
http {
    log_format balancer '$status $request_method $uri upstream=$upstream_addr '
                        'upstream_status=$upstream_status';
    access_log %(dir)s/access.log balancer;
    client_body_temp_path %(dir)s/body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;
    upstream tandem_http {
%(http_servers)s
        keepalive 64;
        keepalive_timeout %(idle_ms)dms;
    }
    upstream tandem_grpc {
%(grpc_servers)s
        keepalive 64;
        keepalive_timeout %(idle_ms)dms;
    }
    server {
        listen 127.0.0.1:%(http_port)d;
        location / {
            proxy_pass http://tandem_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            # the default: a replica that refuses the connection is skipped; a POST
            # already sent is never sent twice
            proxy_next_upstream error timeout;
        }
    }
    server {
        listen 127.0.0.1:%(grpc_port)d http2;
        location / {
            grpc_pass grpc://tandem_grpc;
            grpc_next_upstream error timeout;
        }
    }
}
"""


def free_ports(count: int) -> list[int]:
    """`count` distinct ports, free now, below the kernel's ephemeral range.

    A replica binds its port later, and again after a restart; a port from the
    ephemeral range could meanwhile become the local end of some outgoing
    connection (nginx to a replica, a client to the store), and the restart would
    fail with "address in use". Ports below the range are only ever taken by an
    explicit bind. All are held open while they are chosen, so none repeats."""
    low = _ephemeral_low()
    candidates = list(range(max(1024, low - 12_000), low))
    random.shuffle(candidates)
    sockets: list[socket.socket] = []
    try:
        for port in candidates:
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
            if len(sockets) == count:
                return [sock.getsockname()[1] for sock in sockets]
        raise RuntimeError(f"no {count} free ports below {low}")
    finally:
        for sock in sockets:
            sock.close()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


@dataclass
class Balancer:
    http: str
    grpc: str
    directory: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.http}"

    def access_log(self) -> list[str]:
        return (self.directory / "access.log").read_text().splitlines()

    def error_log(self) -> str:
        return (self.directory / "error.log").read_text()


def _servers(addresses: Sequence[str]) -> str:
    # a replica that refused a connection is left out for a second, then tried again
    return "\n".join(f"        server {a} max_fails=1 fail_timeout=1s;" for a in addresses)


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise RuntimeError("the replica tests need nginx: apt-get install nginx (make test does)")
    return nginx


@contextmanager
def serving_nginx(directory: Path, ports: Sequence[int]) -> Iterator[None]:
    """Run nginx on `directory/nginx.conf` (paths relative to `directory`) until the
    block ends, once it accepts on every one of `ports`."""
    nginx = nginx_binary()
    proc = subprocess.Popen(
        [nginx, "-e", str(directory / "error.log"), "-p", str(directory), "-c", "nginx.conf"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        def accepting() -> bool:
            if proc.poll() is not None:
                assert proc.stderr is not None
                raise RuntimeError(f"nginx did not start: {proc.stderr.read().decode()}")
            for port in ports:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                except OSError as error:
                    raise AssertionError(f"nginx not accepting on {port}: {error}") from error
            return True

        eventually(accepting)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@contextmanager
def nginx_balancer(
    http_backends: Sequence[str], grpc_backends: Sequence[str], *, idle_ms: int
) -> Iterator[Balancer]:
    directory = Path(tempfile.mkdtemp(prefix="tandem-balancer-"))
    directory.chmod(0o755)  # nginx's workers (not root) write the temp paths
    http_port, grpc_port = free_ports(2)
    (directory / "nginx.conf").write_text(
        CONFIG
        % {
            "dir": directory,
            "http_port": http_port,
            "grpc_port": grpc_port,
            "http_servers": _servers(http_backends),
            "grpc_servers": _servers(grpc_backends),
            "idle_ms": idle_ms,
        }
    )
    try:
        with serving_nginx(directory, (http_port, grpc_port)):
            yield Balancer(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
