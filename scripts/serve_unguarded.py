"""`tandem serve` on uvicorn's plain httptools protocol: the bench's `--also unguarded`
row (scripts/bench.py), to show what the HTTP transport bounds of
`http_bridge/transport.py` cost. Everything else is Tandem as it ships."""

from __future__ import annotations

import sys

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from server import cli, lifecycle
from server.config import ServerConfig
from server.telemetry import Telemetry


def plain_protocol(
    limits: ServerConfig, telemetry: Telemetry | None = None
) -> type[HttpToolsProtocol]:
    return HttpToolsProtocol


lifecycle.guarded_protocol = plain_protocol  # type: ignore[attr-defined]

if __name__ == "__main__":
    sys.exit(cli.main())
