"""The usage API's filters, parsed (over the doors: tests/test_untrusted_input.py)."""

from __future__ import annotations

import pytest

from server.errors import InvalidRequestError
from server.translate.usage import parse_usage_params


@pytest.mark.parametrize("param", ["model", "user"])
def test_a_lone_surrogate_in_a_usage_filter_is_refused_before_it_becomes_a_proto(
    param: str,
) -> None:
    # HTTP's query decoding replaces them and a gRPC client cannot encode one,
    # so only a caller of the translator can pass one
    with pytest.raises(InvalidRequestError) as caught:
        parse_usage_params({param: "echo\ud800"})
    assert caught.value.param == param
