"""Money as the ledger keeps it, whole nano-dollars, and as answers spell it, US dollars:
exactly, never through a float (docs/design/money.md §1.4). The one place dollars are
written: prices, costs, budgets and their headers alike."""

from __future__ import annotations

from decimal import Decimal

import orjson

__all__ = ["nanos_text", "usd", "usd_json", "usd_text"]


def usd(nanos: int) -> Decimal:
    """`nanos` billionths of a US dollar, exactly (an int64 fits the context's 28 digits)."""
    return Decimal(nanos).scaleb(-9)


def usd_text(amount: Decimal) -> str:
    """An amount as an exact decimal string without exponent or trailing zeros ("0.15",
    "3", "-0.5"): the proto's money, a header's, and a valid JSON number."""
    text = format(amount, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def nanos_text(nanos: int) -> str:
    """`nanos` as dollars, spelled as `usd_text` spells them (1_200_000 -> "0.0012")."""
    return usd_text(usd(nanos))


def usd_json(nanos: int) -> orjson.Fragment:
    """The dollars as an exact JSON number (1_200_000 -> 0.0012), for orjson to write as
    it is."""
    return orjson.Fragment(nanos_text(nanos))
