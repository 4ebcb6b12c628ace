"""Nano-dollars spelled as US dollars: exact, as a decimal and as a JSON number."""

from __future__ import annotations

import json
from decimal import Decimal

import orjson
import pytest

from server.usage.money import usd, usd_json

INT64_MAX = 2**63 - 1


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "0"),
        (1, "0.000000001"),
        (1_200_000, "0.0012"),
        (8_050_000, "0.00805"),
        (1_000_000_000, "1"),
        (50_000_000_000, "50"),
        (123_456_789_012_345_678, "123456789.012345678"),
        (INT64_MAX, "9223372036.854775807"),
    ],
)
def test_nanos_are_spelled_as_exact_dollars(nanos: int, text: str) -> None:
    assert usd(nanos) == Decimal(nanos) / 10**9 == Decimal(text)
    # a JSON number, written as it is: no float in between (1.2e17 nanos is not a float's)
    encoded = orjson.dumps({"cost_usd": usd_json(nanos)})
    assert encoded == f'{{"cost_usd":{text}}}'.encode()
    assert json.loads(encoded, parse_float=Decimal)["cost_usd"] == usd(nanos)
