"""Money as the ledger keeps it, whole nano-dollars, and as the answers spell it in US
dollars: exactly, never through a float (design: docs/design/money.md §1.4)."""

from __future__ import annotations

from decimal import Decimal

import orjson

__all__ = ["usd", "usd_json", "usd_text"]


def usd(nanos: int) -> Decimal:
    """`nanos` billionths of a US dollar, exactly, without trailing zeros."""
    return Decimal(nanos).scaleb(-9).normalize()


def usd_text(nanos: int) -> str:
    """The dollars as a plain decimal: 1_200_000 -> "0.0012", 0 -> "0", 5e10 -> "50"."""
    return format(usd(nanos), "f")


def usd_json(nanos: int) -> orjson.Fragment:
    """The dollars as an exact JSON number, for orjson to write as it is."""
    return orjson.Fragment(usd_text(nanos))
