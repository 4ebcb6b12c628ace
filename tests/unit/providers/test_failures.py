"""What a non-2xx upstream answer means for the caller; a relayed Responses call's keeps
the upstream's message, with its URLs, hosts and keys cut out."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from server.errors import InvalidRequestError, NotFoundError, UpstreamError
from server.providers.failures import MAX_MESSAGE_CHARS, relayed_error, scrubbed

SECRETS = ("http://upstream.internal:8000/v1", "sk-configured-key-000000")


def body(message: Any, param: Any = None, code: Any = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "x", "param": param, "code": code}})


@pytest.mark.parametrize(
    "message",
    [
        "see http://10.1.2.3:9000/v1/responses for details",
        "host 10.1.2.3:9000 refused",
        "host api.internal.example:8443 refused",
        "could not resolve api.internal.corp: refused",
        "upstream.internal said no",
        "bad key sk-proj-abcdefghijklmnop",
        "header Bearer abc.def.ghi was wrong",
        f"posted to {SECRETS[0]}/responses with {SECRETS[1]}",
    ],
)
def test_scrubbed_cuts_urls_hosts_and_keys(message: str) -> None:
    cleaned = scrubbed(message, SECRETS)
    assert "[redacted]" in cleaned
    for secret in ("10.1.2.3", "internal", "sk-", "abc.def", *SECRETS):
        assert secret not in cleaned


@pytest.mark.parametrize(
    "message",
    [
        "Unsupported parameter: 'temperature' is not supported with this model.",
        "Invalid value for 'input[0].content': use reasoning.encrypted_content, e.g. 0.5.",
        "Try gpt-4.1-mini; web_search_call.action.sources is not included.",
    ],
)
def test_scrubbed_keeps_plain_words_and_field_names(message: str) -> None:
    assert scrubbed(message, SECRETS) == message


def test_scrubbed_bounds_the_length() -> None:
    assert len(scrubbed("word " * 10_000, SECRETS)) == MAX_MESSAGE_CHARS


def test_a_400_keeps_the_upstreams_message_param_and_code() -> None:
    error = relayed_error(400, {}, body("Invalid 'input'.", "input", "invalid_value"), SECRETS)
    assert isinstance(error, InvalidRequestError)
    assert error.message == "upstream provider: Invalid 'input'."
    assert (error.param, error.code) == ("input", "invalid_value")


def test_a_404_it_explains_is_the_callers_404() -> None:
    error = relayed_error(404, {}, body("Previous response not found.", "previous_response_id"), ())
    assert isinstance(error, NotFoundError)
    assert error.param == "previous_response_id"


@pytest.mark.parametrize(
    ("status", "raw", "retryable"),
    [
        (404, b"404: Not Found", False),  # no explanation: a path the server lacks
        (401, body("Incorrect API key provided: sk-abc"), False),
        (429, body("slow down"), True),
        (500, body("boom"), True),
        (400, b"<html>", False),
    ],
)
def test_the_rest_is_as_for_any_call(status: int, raw: bytes, retryable: bool) -> None:
    error = relayed_error(status, {}, raw, SECRETS)
    if status == 400:
        assert isinstance(error, InvalidRequestError)
        assert error.message == "upstream provider rejected the request"
        return
    assert isinstance(error, UpstreamError)
    assert error.retryable is retryable
    assert "sk-abc" not in error.message


@pytest.mark.parametrize("long", ["a." * 15_000 + "1", "x" * 30_000, "a.b" * 10_000 + "_"])
def test_a_long_message_is_scrubbed_in_bounded_time(long: str) -> None:
    started = time.perf_counter()
    assert len(scrubbed(long, SECRETS)) <= MAX_MESSAGE_CHARS
    assert time.perf_counter() - started < 0.5  # the patterns over all of it: seconds


def test_a_key_cut_where_the_patterns_stop_reading_is_not_let_through() -> None:
    for pad in range(1000, 1024):  # the URL redacted, the key's start is in the answer
        cleaned = scrubbed(f"see http://{'a' * pad} with sk-abcdefghijklmnopqrstuvwxyz", ())
        assert cleaned.startswith("see ")
        assert "sk-" not in cleaned
