"""What every section of the configuration is built on: its error, its strictness,
its number types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ConfigError",
    "NonNegativeFloat",
    "PositiveFloat",
    "PositiveInt",
    "Strict",
    "parse_host_port",
]


class ConfigError(Exception):
    """A configuration problem, worded as one line that names the key."""


def parse_host_port(value: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 hosts in brackets); raise ValueError if malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


class Strict(BaseModel):
    """A section: unknown keys refused, frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
