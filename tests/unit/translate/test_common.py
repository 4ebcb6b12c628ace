"""What the provider dialects share: a `Struct` read back as JSON, and kept encoded."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from server.errors import InvalidRequestError
from server.translate.common import SCHEMA_KEPT_MAX_BYTES, struct_json, struct_to_json

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6))
def test_a_struct_reads_back_as_message_to_dict_reads_it(value: dict[str, Any]) -> None:
    struct = struct_pb2.Struct()
    struct.update(value)
    assert struct_to_json(struct) == json_format.MessageToDict(struct)


def test_numbers_come_back_as_floats_and_nesting_survives() -> None:
    struct = struct_pb2.Struct()
    struct.update(
        {"type": "object", "properties": {"n": {"minimum": 1}}, "required": ["n"], "x": None}
    )
    assert struct_to_json(struct) == {
        "type": "object",
        "properties": {"n": {"minimum": 1.0}},
        "required": ["n"],
        "x": None,
    }
    assert isinstance(struct_to_json(struct)["properties"]["n"]["minimum"], float)


def test_a_schema_seen_before_is_encoded_once_and_a_large_one_never_kept() -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}}}
    first, second = struct_pb2.Struct(), struct_pb2.Struct()
    first.update(schema)
    second.update(schema)
    encoded = struct_json(first)
    assert isinstance(encoded, orjson.Fragment)
    assert struct_json(second) is encoded
    assert orjson.loads(orjson.dumps({"parameters": encoded})) == {"parameters": schema}
    large = struct_pb2.Struct()
    large.update({"description": "x" * (SCHEMA_KEPT_MAX_BYTES + 1)})
    assert struct_json(large) == {"description": "x" * (SCHEMA_KEPT_MAX_BYTES + 1)}


def test_a_number_json_cannot_hold_is_the_callers_error() -> None:
    struct = struct_pb2.Struct()
    struct.update({"maximum": float("inf")})  # only protobuf (the gRPC door) can carry it
    with pytest.raises(InvalidRequestError, match="NaN or Infinity"):
        struct_json(struct)
