"""How a client reaches the gateway: its channel (one, reused by every call) and the
metadata every call carries."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

__all__ = ["DEFAULT_TARGET", "ENV_KEY", "Connection", "key_from_env"]

DEFAULT_TARGET = "127.0.0.1:50051"
ENV_KEY = "TANDEM_API_KEY"
USER_AGENT = "tandem-client/0.1.0"


def key_from_env(key: str | None) -> str | None:
    """`key`, else $TANDEM_API_KEY (unset or empty: None)."""
    return key if key is not None else os.environ.get(ENV_KEY) or None


@dataclass(frozen=True, slots=True)
class Connection:
    """`target` (`host:port`, or any gRPC target such as `dns:///host:port`); `key` sent
    as `authorization: Bearer <key>` (None: $TANDEM_API_KEY, else none); TLS when
    `ca_file` names the PEM of the CA that signed the gateway's certificate, else
    plaintext; HTTP/2 keepalive pings every `keepalive_time_s` (None: off; a gateway
    that allows no pings more often than every 5 minutes, gRPC's default, closes a
    connection that pings faster), each answered within `keepalive_timeout_s`;
    `max_message_bytes` bounds a message either way (None: gRPC's 4 MiB received);
    `options`, more gRPC channel arguments; `metadata`, more sent with every call."""

    target: str = DEFAULT_TARGET
    key: str | None = None
    ca_file: str | os.PathLike[str] | None = None
    keepalive_time_s: float | None = None
    keepalive_timeout_s: float | None = None
    max_message_bytes: int | None = None
    options: Sequence[tuple[str, Any]] = ()
    metadata: Sequence[tuple[str, str]] = ()

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        auth = (("authorization", f"Bearer {self.key}"),) if self.key else ()
        return (*auth, *self.metadata)

    def channel_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [("grpc.primary_user_agent", USER_AGENT)]
        if self.keepalive_time_s is not None:
            options.append(("grpc.keepalive_time_ms", int(self.keepalive_time_s * 1000)))
        if self.keepalive_timeout_s is not None:
            options.append(("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)))
        if self.max_message_bytes is not None:
            options.append(("grpc.max_send_message_length", self.max_message_bytes))
            options.append(("grpc.max_receive_message_length", self.max_message_bytes))
        return [*options, *self.options]

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.ca_file is None:
            return None
        return grpc.ssl_channel_credentials(root_certificates=Path(self.ca_file).read_bytes())

    def channel(self) -> grpc.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(self.target, options=self.channel_options())
        return grpc.secure_channel(self.target, credentials, options=self.channel_options())

    def aio_channel(self) -> grpc.aio.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.channel_options())
        return grpc.aio.secure_channel(self.target, credentials, options=self.channel_options())
