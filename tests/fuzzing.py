"""What the fuzz suites share: one settings profile, the JSON they generate, and the
contract's rule that nothing internal reaches a client.

CI runs a bounded, derandomized number of examples with no example database, so a
run cannot flake on a newly found input. To explore longer, raise the scale:
`TANDEM_FUZZ_SCALE=50 .venv/bin/python -m pytest tests/test_fuzz_*.py` multiplies
every suite's examples by 50, draws them at random and keeps failures in
`.hypothesis/` so the next run replays them.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

__all__ = [
    "ERROR_TYPES",
    "FUZZ_SCALE",
    "INTERNALS",
    "JSON",
    "FuzzCases",
    "fuzz_settings",
    "json_values",
    "mutate",
    "nested",
]

FUZZ_SCALE = int(os.environ.get("TANDEM_FUZZ_SCALE", "1"))

# The contract's `error.type` names (CONTRACT.md, Errors).
ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "upstream_error",
        "unavailable_error",
        "timeout_error",
        "internal_error",
    }
)

# A traceback, a Python exception class, a module path or an object repr: none may
# reach a client (generated text spelling `KeyError` by chance is not a realistic draw).
INTERNALS = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+"
    r"|\b[A-Z][A-Za-z]*(?:Error|Exception)\b"
    r"|<class '|object at 0x|google\.protobuf|orjson|pydantic|starlette|grpc\._"
)

JSON = Any


class FuzzCases(Counter[str]):
    """Examples run per suite, printed in pytest's terminal summary."""


def fuzz_settings(max_examples: int) -> settings:
    """The CI profile for `max_examples` (times TANDEM_FUZZ_SCALE, which also unfixes it)."""
    exploring = FUZZ_SCALE > 1
    checks = [
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ]
    if exploring:
        return settings(
            max_examples=max_examples * FUZZ_SCALE,
            deadline=None,
            suppress_health_check=checks,
            print_blob=True,
        )
    return settings(
        max_examples=max_examples,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=checks,
    )


def _text() -> st.SearchStrategy[str]:
    """Any text (hypothesis' default alphabet has no lone surrogates, which JSON
    decoders refuse), with NUL and the other control characters likely."""
    return st.one_of(
        st.text(max_size=20),
        st.text(alphabet=st.sampled_from("\x00\x01\x1f\x7f\u2028\ufeff\U0001f600 ab"), max_size=8),
    )


def json_values(*, keys: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[JSON]:
    """Arbitrary JSON values, nested, with the edge numbers JSON allows."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what orjson writes
        st.sampled_from([0, -1, 2**31 - 1, 2**31, 2**32, 2**63, 2**64 - 1, -(2**63)]),
        st.floats(allow_nan=False, allow_infinity=False),
        _text(),
    )
    names = keys if keys is not None else _text()
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(names, inner, max_size=4),
        ),
        max_leaves=24,
    )


def mutate(
    value: JSON, draw: st.DrawFn, *, keys: st.SearchStrategy[str], below: int, depth: int = 0
) -> JSON:
    """`value` with one thing somewhere inside it, less than `below` levels down, replaced
    by any JSON, or a key drawn from `keys` added to an object."""
    if isinstance(value, dict) and value and depth < below and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(value)))
        return {**value, key: mutate(value[key], draw, keys=keys, below=below, depth=depth + 1)}
    if isinstance(value, list) and value and depth < below and draw(st.booleans()):
        at = draw(st.integers(0, len(value) - 1))
        inner = mutate(value[at], draw, keys=keys, below=below, depth=depth + 1)
        return [*value[:at], inner, *value[at + 1 :]]
    if isinstance(value, dict) and draw(st.booleans()):
        return {**value, draw(keys): draw(json_values(keys=keys))}
    return draw(json_values(keys=keys))


def nested(depth: int) -> bytes:
    """JSON text: `1` inside `depth` objects and arrays, alternating (orjson cannot
    write more than 254 levels)."""
    opening = "".join('{"a":' if level % 2 == 0 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 == 0 else "]" for level in reversed(range(depth)))
    return f"{opening}1{closing}".encode()
