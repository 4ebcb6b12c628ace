"""Every error status of `/v1/responses`, as the official `openai` SDK meets it: the
SDK's own exception class for the status, OpenAI's error body with the contract's
`type`, the request's `x-request-id`, and never the upstream's URL or key. A
failure after a stream started is in `test_responses_door.py` (`response.failed`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from tests.fake_upstream import SECRET_URL, UPSTREAM_KEY, FakeUpstream
from tests.responses_helpers import AUTH, sdk_for
from tests.servers import TandemProcess

CONFIG = f"""
providers:
  - {{name: demo, kind: mock}}
  - {{name: up, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0}}
  - {{name: sluggish, kind: openai, base_url: "%(url)s", api_key: "%(key)s", max_retries: 0,
      timeout_s: 0.3}}
models:
  - {{name: echo, provider: demo}}
  - {{name: relay, provider: up, upstream: relay-upstream}}
  - {{name: slow-relay, provider: sluggish, upstream: relay-upstream}}
tiers:
  free: {{default_model: echo}}
  narrow: {{default_model: echo, models: [echo]}}
  tight: {{default_model: echo, requests_per_minute: 1}}
{AUTH}
usage: {{store: "sqlite:///usage.db", flush_interval_ms: 20}}
"""


@pytest.fixture
def sdk(gateway: TandemProcess, fake: FakeUpstream) -> Iterator[Callable[..., Any]]:
    """The SDK as a caller of its own in a tier, or with a key (no retries: each status
    is met once)."""
    fake.reset()
    clients: list[openai.OpenAI] = []

    def make(tier: str = "free", key: str | None = None) -> Any:
        client = sdk_for(gateway, f"errors-{uuid.uuid4().hex[:12]}", tier)
        if key is not None:
            client = client.with_options(api_key=key)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def refused(
    call: Callable[[], Any], exception: type[openai.APIStatusError], status: int, kind: str
) -> openai.APIStatusError:
    """The SDK's exception for `call`, checked: its class and status, OpenAI's error body
    with the contract's `type`, an `x-request-id`, nothing of the upstream's."""
    with pytest.raises(exception) as raised:
        call()
    error = raised.value
    assert error.status_code == status
    body = error.response.json()
    assert body["error"]["type"] == kind, body
    assert error.response.headers["x-request-id"]
    assert SECRET_URL not in error.response.text
    assert UPSTREAM_KEY not in error.response.text
    return error


def test_400_a_bad_value_names_its_field(sdk: Callable[..., Any]) -> None:
    error = refused(
        lambda: sdk().responses.create(model="echo", input="hi", temperature=9),
        openai.BadRequestError,
        400,
        "invalid_request_error",
    )
    assert error.response.json()["error"]["param"] == "temperature"


def test_401_no_valid_credential(sdk: Callable[..., Any]) -> None:
    refused(
        lambda: sdk(key="not-a-token").responses.create(model="echo", input="hi"),
        openai.AuthenticationError,
        401,
        "authentication_error",
    )


def test_403_a_model_the_tier_may_not_use(sdk: Callable[..., Any], fake: FakeUpstream) -> None:
    refused(
        lambda: sdk("narrow").responses.create(model="relay", input="hi"),
        openai.PermissionDeniedError,
        403,
        "permission_error",
    )
    assert not fake.requests


def test_404_an_unknown_model_and_an_unknown_response(sdk: Callable[..., Any]) -> None:
    client = sdk()
    refused(
        lambda: client.responses.create(model="no-such-model", input="hi"),
        openai.NotFoundError,
        404,
        "not_found_error",
    )
    refused(
        lambda: client.responses.retrieve("resp_0123456789abcdef0123456789"),
        openai.NotFoundError,
        404,
        "not_found_error",
    )


def test_413_a_body_past_max_body_bytes(sdk: Callable[..., Any]) -> None:
    refused(
        lambda: sdk().responses.create(model="echo", input="w " * 4_500_000),  # 9 MB
        openai.APIStatusError,
        413,
        "invalid_request_error",
    )


def test_429_past_the_tier_s_rate_says_when_to_retry(sdk: Callable[..., Any]) -> None:
    client = sdk("tight")  # one request a minute
    client.responses.create(model="echo", input="hi")
    error = refused(
        lambda: client.responses.create(model="echo", input="hi", stream=True),
        openai.RateLimitError,
        429,
        "rate_limit_error",
    )
    assert int(error.response.headers["retry-after"]) > 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_502_an_upstream_failure_is_not_retried_by_the_sdk(
    sdk: Callable[..., Any], fake: FakeUpstream, stream: bool
) -> None:
    fake.reset("500")
    error = refused(
        lambda: sdk().responses.create(model="relay", input="hi", stream=stream),
        openai.InternalServerError,
        502,
        "upstream_error",
    )
    assert error.response.headers["x-should-retry"] == "false"


def test_504_an_upstream_that_does_not_answer_in_time(
    sdk: Callable[..., Any], fake: FakeUpstream
) -> None:
    fake.reset("slow:3")
    error = refused(
        lambda: sdk().responses.create(model="slow-relay", input="hi"),
        openai.InternalServerError,
        504,
        "timeout_error",
    )
    assert error.response.headers["x-should-retry"] == "false"
