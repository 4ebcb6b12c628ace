"""What every section of the configuration is built on: its error, its strictness,
its number types."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "ConfigError",
    "NonNegativeFloat",
    "PositiveFloat",
    "PositiveInt",
    "Strict",
    "Usd",
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


def _usd(value: object) -> Decimal:
    """US dollars, exactly as written: a YAML number goes through its text, so 0.15
    is 0.15 and never the float nearest it."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError("expected a number of US dollars, e.g. 0.15 or '0.15'")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"expected a number of US dollars, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"expected a finite, non-negative number of US dollars, got {value!r}")
    return amount


# money in configs: a non-negative Decimal of US dollars (never a float)
Usd = Annotated[Decimal, BeforeValidator(_usd)]
