"""Money as the ledger keeps it, whole nano-dollars, in US dollars for the answers:
exactly, never through a float (docs/design/money.md §1.4). Spelled as prices are
(`usd_text`, server/usage/prices.py)."""

from __future__ import annotations

from decimal import Decimal

import orjson

from server.usage.prices import usd_text

__all__ = ["usd", "usd_json"]


def usd(nanos: int) -> Decimal:
    """`nanos` billionths of a US dollar, exactly (an int64 fits the context's 28 digits)."""
    return Decimal(nanos).scaleb(-9)


def usd_json(nanos: int) -> orjson.Fragment:
    """The dollars as an exact JSON number (1_200_000 -> 0.0012), for orjson to write as
    it is."""
    return orjson.Fragment(usd_text(usd(nanos)))
