"""Fuzzing the HTTP door: every route of the live /openapi.json through schemathesis,
and arbitrary JSON bodies posted to the JSON routes.

Whatever arrives, the answer is below 500, carries an `x-request-id`, and an error
is the contract's body for its route with nothing internal in it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import example, given
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import negative_data_rejection

from tests.fuzzing import (
    ERROR_TYPES,
    FUZZ_SCALE,
    INTERNALS,
    JSON,
    FuzzCases,
    fuzz_settings,
    json_values,
    mutate,
    nested,
)
from tests.servers import TandemProcess, run_cli, start_tandem
from tests.stores import pg_schema_url

# Examples per operation in the fuzzing phase (the coverage phase adds its own few).
EXAMPLES_PER_OPERATION = 25

# Two doors: the built-in default (auth off, the mock's `echo`, SQLite usage), and
# auth required with an API key from `tandem keys` and PostgreSQL usage.
CONFIG = """
providers:
  - {name: mock, kind: mock}
models:
  - {name: echo, provider: mock}
"""
KEYED_CONFIG = (
    CONFIG
    + """
auth: {required: true}
usage: {store: "%s"}
"""
)

# A status the contract pins -> the `error.type` it spells.
STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class Answer(Protocol):
    """An HTTP answer, httpx's or schemathesis'."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, object]: ...
    @property
    def content(self) -> bytes: ...


def assert_contract_answer(path: str, answer: Answer) -> None:
    """Below 500, with a request id; an error in its route's shape, with nothing internal."""
    status, headers, body = answer.status_code, answer.headers, answer.content
    assert status < 500, body[:500]
    assert headers.get("x-request-id"), "every answer carries x-request-id"
    if status < 400:
        return
    text = body.decode("utf-8", "replace")
    leaked = INTERNALS.search(text)
    assert leaked is None, f"internal detail {leaked.group()!r} in {text[:500]}"
    error = orjson.loads(body)
    if path.startswith("/api/"):  # Ollama
        assert set(error) == {"error"}, error
        assert isinstance(error["error"], str), error
        return
    if path.startswith("/v1/messages"):  # Anthropic
        assert error["type"] == "error", error
        assert set(error["error"]) >= {"type", "message"}, error
        return
    assert set(error) == {"error"}, error
    detail = error["error"]
    assert set(detail) == {"message", "type", "code", "param"}, error
    assert isinstance(detail["message"], str), error
    assert detail["type"] in ERROR_TYPES, error
    assert detail["type"] == STATUS_TYPES.get(status, detail["type"]), (status, error)
    assert all(detail[key] is None or isinstance(detail[key], str) for key in ("code", "param"))


@dataclass(frozen=True)
class Door:
    """A fuzzed server and the headers its caller sends."""

    process: TandemProcess
    headers: dict[str, str]


def _api_key(tmp_path: Path, config: str) -> str:
    path = tmp_path / "keys.yaml"
    path.write_text(config)
    done = run_cli("keys", "create", "--user", "fuzz", "--config", path, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    key: str = orjson.loads(done.stdout)["key"]
    return key


@pytest.fixture(scope="module", params=["anonymous", "api-key"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Door]:
    tmp_path = tmp_path_factory.mktemp("fuzz-http")
    with contextlib.ExitStack() as stack:
        if request.param == "anonymous":
            config, headers = CONFIG, {}
        else:
            config = KEYED_CONFIG % stack.enter_context(pg_schema_url())
            headers = {"authorization": f"Bearer {_api_key(tmp_path, config)}"}
        process = start_tandem(tmp_path, config)
        yield Door(process, headers)
        assert process.terminate() == 0, process.stderr()


def _schemathesis_config() -> SchemathesisConfig:
    exploring = FUZZ_SCALE > 1
    generation: dict[str, object] = {
        "mode": "all",
        "max-examples": EXAMPLES_PER_OPERATION * FUZZ_SCALE,
        "deterministic": not exploring,
    }
    if not exploring:
        generation["database"] = "none"
    return SchemathesisConfig.from_dict(
        {
            "seed": 1,
            "generation": generation,
            "phases": {"stateful": {"enabled": False}},
        }
    )


@pytest.fixture(scope="module")
def live_schema(server: Door) -> BaseSchema:
    return schemathesis.openapi.from_url(
        f"{server.process.base_url}/openapi.json", config=_schemathesis_config()
    )


schema = schemathesis.pytest.from_fixture("live_schema")


@pytest.fixture
def node_id(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32's lazy schema reads `node._nodeid`, which pytest 9.2 no longer has."""
    request.node._nodeid = request.node.nodeid


@schema.parametrize()
@pytest.mark.usefixtures("node_id")
def test_every_operation_answers_below_500_in_the_contracts_shape(
    case: Case[Any], fuzz_cases: FuzzCases, server: Door
) -> None:
    fuzz_cases["http: schemathesis (every operation)"] += 1
    response = case.call_and_validate(
        headers=server.headers, checks=[not_a_server_error, negative_data_rejection], timeout=10
    )
    assert_contract_answer(case.path, response)


JSON_ROUTES = (
    "/native/v1/chat/completions",
    "/v1/chat/completions",
    "/v1/completions",
    "/native/v1/embeddings",
    "/v1/embeddings",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
)

# Valid requests, so that mutations of them reach past the first check.
SEEDS: Sequence[JSON] = (
    {"model": "echo", "messages": [{"role": "user", "content": "hi there"}]},
    {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "stop": "x"},
    {"model": "echo", "input": ["one", "two"]},
    {"model": "echo", "input": "one", "encoding_format": "base64"},
    # Ollama's shapes
    {"model": "echo:latest", "prompt": "hi", "system": "s", "stream": False},
    {
        "model": "echo",
        "messages": [{"role": "user", "content": "hi", "images": ["iVBORw0KGgo="]}],
        "options": {"temperature": 0.5, "num_predict": 3, "stop": "x"},
        "format": "json",
    },
    {"model": "echo", "prompt": "one"},
)

FIELDS = st.sampled_from(
    [
        "options",
        "think",
        "top_k",
        "reasoning_effort",
        "thinking",
        "prompt",
        "system",
        "format",
        "images",
        "num_predict",
        "tool_name",
        "model",
        "messages",
        "role",
        "content",
        "type",
        "text",
        "stop",
        "n",
        "max_tokens",
        "temperature",
        "stream",
        "stream_options",
        "tool_choice",
        "tools",
        "logit_bias",
        "response_format",
        "input",
        "encoding_format",
        "dimensions",
        "extra_body",
        "extra_body_json",
        "store",
        "echo",
    ]
)


@st.composite
def deep_bodies(draw: st.DrawFn, depths: st.SearchStrategy[int]) -> bytes:
    """A valid request with one field (known or not) nested `depths` deep."""
    seed = orjson.dumps({**draw(st.sampled_from(SEEDS)), "_": 0})
    field = orjson.dumps(draw(st.one_of(FIELDS, st.just("metadata"))))
    return seed.replace(b'"_":0', field + b":" + nested(draw(depths)))


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """JSON text: a mutated valid request, any JSON, deep nesting, or bytes near JSON."""
    kind = draw(st.sampled_from(["mutated", "any", "deep", "raw"]))
    if kind == "deep":
        return draw(deep_bodies(st.integers(1, 1100)))
    if kind == "mutated":
        return orjson.dumps(mutate(draw(st.sampled_from(SEEDS)), draw, keys=FIELDS, below=4))
    if kind == "any":
        return orjson.dumps(draw(json_values(keys=FIELDS)))
    return draw(
        st.one_of(
            st.binary(max_size=64),
            st.sampled_from(
                [
                    b'{"model": "\\ud800"}',
                    b'{"model": "\\udc00x"}',
                    b'{"a": "\xff"}',
                    b'{"n": 123456789012345678901234567890}',
                    b'{"temperature": 1e400}',
                    b"[" * 2000,
                    b"{" * 40,
                    b"\x00",
                ]
            ),
        )
    )


@pytest.fixture(scope="module")
def http(server: Door) -> Iterator[httpx.Client]:
    headers = {**server.headers, "content-type": "application/json"}
    with httpx.Client(base_url=server.process.base_url, headers=headers, timeout=10) as client:
        yield client


def posted(http: httpx.Client, route: str, body: bytes) -> httpx.Response:
    """`body` posted on `route`, its answer checked by `assert_contract_answer`."""
    response = http.post(route, content=body)
    assert_contract_answer(route, response)
    return response


@fuzz_settings(max_examples=150)
@given(route=st.sampled_from(JSON_ROUTES), body=bodies())
def test_any_json_body_is_answered_below_500_in_the_contracts_shape(
    http: httpx.Client, fuzz_cases: FuzzCases, route: str, body: bytes
) -> None:
    fuzz_cases["http: JSON bodies"] += 1
    posted(http, route, body)


QUERY_TEXT = st.one_of(
    st.text(max_size=16),
    st.text(alphabet=st.sampled_from("\x00\x7f\u2028é0123456789-:TZ+"), max_size=24),
)
TIMES = st.one_of(
    st.sampled_from(["2026-01-31T12:00:00Z", "0001-01-01T00:00:00+01:00"]), QUERY_TEXT
)
# Each parameter mostly valid, so that one odd value is what the server meets.
USAGE_QUERIES = st.fixed_dictionaries(
    {},
    optional={
        "since": TIMES,
        "until": TIMES,
        "user": st.one_of(st.just("fuzz"), QUERY_TEXT),
        "model": st.one_of(st.just("echo"), QUERY_TEXT),
        "limit": st.one_of(st.integers(-1, 1001).map(str), QUERY_TEXT),
        "x": QUERY_TEXT,
    },
)


@fuzz_settings(max_examples=100)
@given(query=USAGE_QUERIES)
@example(query={"model": "a\x00b"})
@example(query={"user": "fuzz\x00"})
def test_any_usage_query_is_answered_below_500_in_the_contracts_shape(
    http: httpx.Client, fuzz_cases: FuzzCases, query: dict[str, str]
) -> None:
    fuzz_cases["http: usage queries"] += 1
    response = http.get("/native/v1/usage", params=query)
    assert_contract_answer("/native/v1/usage", response)


@fuzz_settings(max_examples=30)
@given(route=st.sampled_from(JSON_ROUTES), body=deep_bodies(st.integers(33, 1100)))
def test_json_nested_deeper_than_32_levels_is_a_400(
    http: httpx.Client, fuzz_cases: FuzzCases, route: str, body: bytes
) -> None:
    fuzz_cases["http: deep JSON"] += 1
    response = posted(http, route, body)
    assert response.status_code == 400, (body[:80], response.text[:300])


# What h11 lets a client put in a header value: visible latin-1, spaces and tabs inside.
HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=300,
).map(str.strip)
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@fuzz_settings(max_examples=100)
@given(
    route=st.sampled_from(["/native/v1/models", "/v1/models", "/v1/models/echo"]),
    name=st.sampled_from(["authorization", "x-request-id"]),
    value=st.one_of(HEADER_TEXT, HEADER_TEXT.map(lambda text: f"Bearer {text}".strip())),
)
def test_any_credential_or_request_id_is_answered_in_the_contracts_shape(
    http: httpx.Client, fuzz_cases: FuzzCases, route: str, name: str, value: str
) -> None:
    fuzz_cases["http: header values"] += 1
    response = http.get(route, headers={name.encode(): value.encode("latin-1")})
    assert_contract_answer(route, response)
    assert REQUEST_ID.fullmatch(response.headers["x-request-id"]), response.headers


def test_the_fuzzed_server_logged_no_traceback(server: Door) -> None:
    """Runs after the suites above (same module): a logged bug is a failure too."""
    assert "Traceback" not in server.process.settled_stderr()
